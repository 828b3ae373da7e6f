"""The contract both sides share, a leaf that imports nothing of ours (checked by import-linter:
``make lint``). What a record is and how it travels:

    records   the record kinds, their columns and Arrow schemas (contract/records.py)
    wire      Kafka messages: headers, Arrow IPC batches, msgpack single records (docs/wire-format.md)
    batch     the Batcher: tables of one kind cut by rows and age
    errors    the one exception tree, and classify(): whose fault a failure is
    retry     the one retry helper (tenacity): infrastructure faults only
    kafka     librdkafka pass-through settings (TLS, SASL) from a file or the environment, redacted()
    metrics   the one style of Prometheus metrics: MetricSet.on(registry)
"""
