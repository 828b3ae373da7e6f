"""Blindspot: what services do on the wire, seen from the kernel, kept queryable in ClickHouse.

Packages:
    agent/    kernel sources (eBPF via bcc) and the host agent's pipeline
    ingest/   the ClickHouse side: migrations, services (chDB, server), batching sink
    blindspot/  shared pieces: record kinds, config, CLI, metrics
"""

__version__ = "0.1.0"
