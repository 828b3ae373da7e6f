-- Which protocol each HTTP row is (http/1.1, h2, h2c, grpc), the gRPC status code from the trailers, and whether it was read from the plaintext
-- of a TLS connection (Go crypto/tls uprobes: agent/go_tls_source.py, docs/go-tls.md). Rows from
-- agents before this column carry protocol ''. Added at the end: inserts name their columns.
ALTER TABLE blindspot.http_requests
    ADD COLUMN IF NOT EXISTS protocol LowCardinality(String) AFTER parent_request_id,
    ADD COLUMN IF NOT EXISTS encrypted UInt8 AFTER protocol,
    ADD COLUMN IF NOT EXISTS grpc_status LowCardinality(String) AFTER encrypted;
