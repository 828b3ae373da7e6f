"""The Kafka side of the fleet tests: one real broker per session (scripts/kafka.sh), topics private
to each test (a topic prefix), and the engine read back from a subprocess (chDB serves one data folder
per process, and a worker under test may own another)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """``n`` ports nobody listens on, below the kernel's ephemeral range: a port inside it can be taken
    by any outgoing connection meanwhile, and a probe connecting to a closed one can even connect to
    itself (TCP simultaneous open), which makes the port look taken."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        if p not in ports:
            ports.append(p)
    return ports


# A broker of the session's own, on free ports, with its state in a fresh folder: nothing an earlier run
# or another process left (a broker on 19092, old topics) changes what the tests see.
# BLINDSPOT_TEST_KAFKA_PORT picks a fixed port instead (a broker already running there is reused).
_FIXED = os.environ.get("BLINDSPOT_TEST_KAFKA_PORT")
KAFKA_ENV = {**os.environ, "KAFKA_WATCH_PID": str(os.getpid())}  # the broker stops when this pytest dies
if _FIXED:
    KAFKA_ENV.update({"KAFKA_PORT": _FIXED, "KAFKA_CONTROLLER_PORT": str(int(_FIXED) + 1)})


def kafka_sh(cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["bash", str(REPO / "scripts" / "kafka.sh"), cmd], env=KAFKA_ENV,
                              check=True, timeout=timeout, capture_output=True)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"kafka.sh {cmd} failed:\n{e.stderr.decode(errors='replace')}") from e


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running broker; stopped at the end only if this session started it."""
    if _FIXED:
        was_running = subprocess.run(["bash", str(REPO / "scripts" / "kafka.sh"), "status"], env=KAFKA_ENV,
                                     capture_output=True).returncode == 0
        kafka_sh("start")
    else:
        was_running = False
        for attempt in range(3):  # a port taken between the choice and the bind: choose again
            port, controller = free_ports(2)
            KAFKA_ENV.update({"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller),
                              "KAFKA_STATE": str(tmp_path_factory.mktemp("kafka"))})
            try:
                kafka_sh("start")
                break
            except RuntimeError:
                kafka_sh("stop", timeout=60)
                if attempt == 2:
                    raise
    try:
        yield f"127.0.0.1:{KAFKA_ENV['KAFKA_PORT']}"
    finally:
        if not was_running:
            kafka_sh("stop", timeout=60)


@pytest.fixture
def prefix() -> str:
    """Topic prefix private to one test: no test sees another's records or dead letters."""
    return f"t{uuid.uuid4().hex[:8]}."


def create_topics(bootstrap: str, prefix: str, partitions: int = 3) -> None:
    from ingest.kafka_source import KafkaSourceConfig, ensure_topics

    ensure_topics(KafkaSourceConfig(bootstrap, topic_prefix=prefix, partitions=partitions))


def consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30) -> list[Any]:
    """Every message of ``topic`` (waits until ``expect`` are there or the time is up)."""
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=0.5):
                if not m.error():
                    out.append(m)
        # A little longer: more than expected would be a duplicate the test must see.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            out += [m for m in c.consume(10_000, timeout=0.2) if not m.error()]
    finally:
        c.close()
    return out


_QUERY = """
import json, sys
from ingest.clickhouse_sink.service import open_service
svc = open_service(data_dir=sys.argv[1])
try:
    sys.stdout.buffer.write(svc.query_text(sys.argv[2], "JSONEachRow"))
finally:
    svc.close()
"""


def query_dir(data_dir: str | Path, sql: str) -> list[dict[str, Any]]:
    """Rows of ``sql`` on the engine folder ``data_dir``, read by a short-lived process."""
    out = subprocess.run([sys.executable, "-c", _QUERY, str(data_dir), sql], check=True,
                         capture_output=True, timeout=120, cwd=REPO).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def make_rows(n: int, hosts: tuple[str, ...] = ("h1",), start_id: int = 1) -> list[dict[str, Any]]:
    """tcp_connection records with a unique ``conn_id`` each, times recent (tables have a TTL)."""
    now = time.time_ns()
    rows = []
    for i in range(n):
        cid = start_id + i
        st = now - 10**9 + i * 1_000
        rows.append({
            "host": hosts[i % len(hosts)], "conn_id": cid, "start_time": st, "end_time": st + 5_000_000,
            "duration_ns": 5_000_000, "handshake_ns": 120_000 + i % 7, "role": "client" if i % 2 else "server",
            "family": 2, "local_addr": "10.1.2.3", "local_port": 40000 + i % 1000,
            "remote_addr": f"192.168.{i % 256}.{(i // 256) % 256}", "remote_port": 443, "pid": 1000 + i % 50,
            "comm": "curl", "bytes_sent": i * 3, "bytes_received": i * 5, "retransmits": i % 3,
            "srtt_us": 250 + i % 100, "close_reason": "fin", "started_before_agent": 0,
            "owner_source": "tracepoint",
        })
    return rows
