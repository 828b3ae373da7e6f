"""Wire format candidates, measured on realistic tcp_connection records: bytes per record (alone and
inside a zstd-compressed Kafka batch) and encode/decode cost per record. "decode" is what an ingest
worker pays to get from message bytes to something it can check and insert: Python dicts for the
row formats, an Arrow table (zero-copy) for Arrow batches. The winner is contract/wire.py;
docs/wire-format.md records one run.

    .venv/bin/python bench/bench_wire.py [N]
"""

from __future__ import annotations

import io
import json
import random
import sys
import time

import msgpack
import pyarrow as pa

from contract.records import TCP_CONNECTION


def records(n: int) -> list[dict]:
    rnd = random.Random(7)
    t0 = time.time_ns() - n * 1_000_003  # recent: the tables drop rows past their TTL on insert
    comms = ["nginx", "postgres", "python3", "curl", "java", "envoy"]
    out = []
    for i in range(n):
        st = t0 + i * 1_000_003
        out.append({
            "host": "web-01.prod.example", "conn_id": rnd.getrandbits(63), "start_time": st,
            "end_time": st + rnd.randrange(10**9), "duration_ns": rnd.randrange(10**9),
            "handshake_ns": rnd.randrange(10**6), "role": rnd.choice(["client", "server"]), "family": 2,
            "local_addr": "10.0.0.5", "local_port": rnd.choice([443, 5432, 8080]),
            "remote_addr": f"10.0.{rnd.randrange(255)}.{rnd.randrange(255)}",
            "remote_port": rnd.randrange(32768, 61000), "pid": rnd.randrange(1, 4_000_000),
            "comm": rnd.choice(comms), "bytes_sent": rnd.randrange(10**7),
            "bytes_received": rnd.randrange(10**7), "retransmits": rnd.randrange(3),
            "srtt_us": rnd.randrange(50, 50_000), "close_reason": "fin", "started_before_agent": 0,
            "owner_source": "tracepoint",
        })
    return out


def measure(name, enc, dec, rows):
    t = time.perf_counter()
    blobs = [enc(r) for r in rows]
    te = time.perf_counter() - t
    t = time.perf_counter()
    back = [dec(b) for b in blobs]
    td = time.perf_counter() - t
    assert back[0]["conn_id"] == rows[0]["conn_id"]
    size = sum(map(len, blobs)) / len(rows)
    # Kafka compresses whole record batches; 1000 records a batch, zstd like the producer config.
    zs = []
    for i in range(0, len(blobs), 1000):
        chunk = b"".join(blobs[i:i + 1000])
        zs.append(len(pa.compress(chunk, codec="zstd", asbytes=True)))
    zsize = sum(zs) / len(rows)
    n = len(rows)
    print(f"{name:<22} {size:7.1f} B  {zsize:6.1f} B zstd  enc {te / n * 1e6:5.2f} us  dec {td / n * 1e6:5.2f} us")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rows = records(n)
    cols = TCP_CONNECTION.column_names
    print(f"{n} tcp_connection records ({len(cols)} fields); per record:")
    measure("json (stdlib)", lambda r: json.dumps(r, separators=(",", ":")).encode(), json.loads, rows)
    pk = msgpack.Packer(use_bin_type=True)
    measure("msgpack map", pk.pack, lambda b: msgpack.unpackb(b, raw=False), rows)
    measure("msgpack array", lambda r: pk.pack([r[c] for c in cols]),
            lambda b: dict(zip(cols, msgpack.unpackb(b, raw=False), strict=False)), rows)
    from contract import wire

    for size in (500, 2000):
        t = time.perf_counter()
        msgs = []
        for i in range(0, n, size):
            msgs += wire.encode_batch(TCP_CONNECTION, rows[i:i + size])
        te = time.perf_counter() - t
        t = time.perf_counter()
        tables = [wire.decode_batch(v) for v, _ in msgs]
        td = time.perf_counter() - t
        assert sum(tb.num_rows for tb in tables) == n
        size_b = sum(len(v) for v, _ in msgs) / n
        zsize = sum(len(pa.compress(v, codec="zstd", asbytes=True)) for v, _ in msgs) / n
        print(f"{'arrow batch of ' + str(size):<22} {size_b:7.1f} B  {zsize:6.1f} B zstd  enc {te / n * 1e6:5.2f} us"
              f"  dec {td / n * 1e6:5.2f} us")
    try:
        import fastavro
    except ImportError:
        print("fastavro not installed: skipped")
        return
    types = {"host": "string", "role": "string", "local_addr": "string", "remote_addr": "string",
             "comm": "string", "close_reason": "string", "owner_source": "string"}
    schema = fastavro.parse_schema({"type": "record", "name": "tcp_connection", "fields": [
        {"name": c, "type": types.get(c, "long")} for c in cols]})

    def aenc(r):
        b = io.BytesIO()
        fastavro.schemaless_writer(b, schema, r)
        return b.getvalue()

    measure("avro (fastavro)", aenc, lambda b: fastavro.schemaless_reader(io.BytesIO(b), schema, schema), rows)


if __name__ == "__main__":
    main()
