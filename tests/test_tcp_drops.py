"""Packet drops, end to end on the real kernel: each test makes the kernel drop packets in a known way
inside a network namespace of its own (so other traffic of the host cannot blur the counts), then
checks `blindspot run`'s rows exactly: packet_drops per namespace and reason, and a connection's
drops and main reason on its tcp_connections row and open snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.embedded_agent import REPO, Agent

pytestmark = pytest.mark.root

DROPS_IN_NETNS = """
SELECT reason, toUInt64(sum(drops)) AS drops, toUInt64(sum(conn_drops)) AS conn_drops
FROM blindspot.packet_drops WHERE netns = {netns:UInt32} AND time >= fromUnixTimestamp64Nano({since:Int64})
GROUP BY reason ORDER BY reason
"""

# Both ends of the one connection between ports a and b, closed after ``since``. Ports alone are not
# enough: the host's own connections (a test's Kafka client retrying a closed port, say) draw local
# ports from the same range, and one of them sharing a port made a test read a stranger's row.
CONNECTION = """
SELECT role, local_port, remote_port, toUInt64(retransmits) AS retransmits, toUInt64(drops) AS drops,
       drop_reason, close_reason
FROM blindspot.tcp_connections
WHERE ((local_port = {a:UInt16} AND remote_port = {b:UInt16}) OR (local_port = {b:UInt16} AND remote_port = {a:UInt16}))
  AND end_time >= fromUnixTimestamp64Nano({since:Int64})
ORDER BY role
"""


# Frees the kernel files under a reason that are not loss: NOT_SPECIFIED (a plain kfree_skb(), e.g. a
# bare ACK a deferred accept ignores) and QUEUE_PURGE (what a socket still held when destroyed).
INCIDENTAL = {"NOT_SPECIFIED", "QUEUE_PURGE"}


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inode = os.stat(f"/run/netns/{name}").st_ino  # = the kernel's net->ns.inum
        # The kernel reuses a freed namespace's inode number: drops of an earlier namespace with this
        # number (its teardown, say) are reported within a snapshot interval (1 s here) of happening.
        # Rows from before ``since`` may hold them; this namespace's traffic starts after it.
        time.sleep(2.0)
        self.since = time.time_ns()

    def rows_since(self, agent: Agent) -> dict[str, tuple[int, int]]:
        return {r["reason"]: (int(r["drops"]), int(r["conn_drops"]))
                for r in agent.rows(DROPS_IN_NETNS, netns=self.inode, since=self.since)}

    def run(self, scenario: str, *args: str) -> dict[str, Any]:
        out = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-m", "tests.drops_traffic",
                              scenario, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def _namespaces() -> Iterator[list[str]]:
    """Namespaces live until the module ends: no two tests' namespaces share an inode number, and the
    drops of a namespace's teardown come after every test."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(_namespaces: list[str]) -> Netns:
    name = f"bs-drops-{os.getpid()}-{len(_namespaces)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    _namespaces.append(name)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return Netns(name)


@pytest.fixture
def veth_pair(_namespaces: list[str]) -> tuple[Netns, Netns]:
    """Two namespaces joined by a veth pair: client 10.213.0.1, server 10.213.0.2 (tests/drops_traffic.py)."""
    names = [f"bs-drops-{os.getpid()}-{len(_namespaces)}{side}" for side in "cs"]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
        _namespaces.append(name)
        # No IPv6 on the pair: its neighbour discovery would be traffic of its own.
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    c, s = names
    subprocess.run(["ip", "link", "add", "bsd-c", "netns", c, "type", "veth", "peer", "name", "bsd-s", "netns", s],
                   check=True)
    for name, dev, addr in ((c, "bsd-c", "10.213.0.1/24"), (s, "bsd-s", "10.213.0.2/24")):
        for cmd in (["ip", "addr", "add", addr, "dev", dev], ["ip", "link", "set", dev, "up"],
                    ["ip", "link", "set", "lo", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
    return Netns(c), Netns(s)


def drops_by_reason(agent: Agent, ns: Netns, ready: Any, settle_s: float = 2.5) -> dict[str, tuple[int, int]]:
    """{reason: (drops, conn_drops)} the agent stored for ``ns``, once ``ready`` holds, read again after
    ``settle_s`` (more than two snapshot intervals: a late extra drop would show)."""
    def as_map(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
        return {r["reason"]: (int(r["drops"]), int(r["conn_drops"])) for r in rows}

    agent.wait_rows(DROPS_IN_NETNS, lambda r: ready(as_map(r)), netns=ns.inode, since=ns.since)
    time.sleep(settle_s)
    return as_map(agent.rows(DROPS_IN_NETNS, netns=ns.inode, since=ns.since))


def test_no_socket(agent: Agent, netns: Netns) -> None:
    got = netns.run("no_socket")
    assert got["refused"]
    drops = drops_by_reason(agent, netns, lambda m: "NO_SOCKET" in m)
    # One SYN to a closed port; the kernel's RST back is delivered, not dropped. The SYN belongs to no
    # socket on arrival (loopback orphans it), so it is not on the client's row.
    assert drops == {"NO_SOCKET": (1, 0)}
    rows = agent.wait_rows(CONNECTION, lambda r: len(r) >= 1, a=got["local_port"], b=got["port"],
                           since=netns.since)
    assert [(r["role"], r["close_reason"], int(r["drops"]), r["drop_reason"]) for r in rows] == [
        ("client", "refused", 0, "")]


def test_listen_overflow(agent: Agent, netns: Netns) -> None:
    got = netns.run("listen_overflow")
    n = got["overflows"]  # the namespace's own TcpExtListenOverflows: 1 unless the script stalled
    assert n >= 1 and got["received"] == ["1", "2", "3"]
    drops = drops_by_reason(agent, netns, lambda m: "TCP_LISTEN_OVERFLOW" in m)
    # Dropped at the listener (the connection does not exist on the server yet): the host's count only.
    assert drops["TCP_LISTEN_OVERFLOW"] == (n, 0), drops
    # Besides: the bare ACKs a deferred accept ignores are freed as NOT_SPECIFIED (counted, never on a
    # connection), and sockets destroyed with something still queued free it as QUEUE_PURGE
    # (sk_stream_kill_queues, after the connection's row is out): neither is on a connection.
    assert set(drops) <= {"TCP_LISTEN_OVERFLOW", *INCIDENTAL}, drops
    assert all(conn == 0 for _, conn in drops.values()), drops
    # The client's segment was dropped n times: n retransmissions, the last one accepted.
    rows = agent.wait_rows(CONNECTION, lambda r: len(r) >= 2, a=got["late_port"], b=got["port"],
                           since=netns.since)
    client = next(r for r in rows if r["role"] == "client")
    assert int(client["retransmits"]) == n, rows
    assert int(client["drops"]) == 0, rows


def test_netfilter_drop_on_a_connection(agent: Agent, veth_pair: tuple[Netns, Netns]) -> None:
    client_ns, server_ns = veth_pair
    got = client_ns.run("netfilter", "--hold", "1.0", "--server-ns", server_ns.name)
    n = got["dropped"]  # the nft rule's own counter
    assert n >= 1 and got["answer"] == "ok"
    drops = drops_by_reason(agent, server_ns, lambda m: m.get("NETFILTER_DROP", (0, 0))[0] >= n)
    assert drops["NETFILTER_DROP"] == (n, n), drops  # all of them on the receiving connection
    # and, at most, the incidental frees of test_listen_overflow, never on a connection
    assert set(drops) <= {"NETFILTER_DROP", *INCIDENTAL}, drops
    assert all(conn == 0 for reason, (_, conn) in drops.items() if reason != "NETFILTER_DROP"), drops
    rows = agent.wait_rows(CONNECTION, lambda r: len(r) >= 2, a=got["local_port"], b=got["port"],
                           since=client_ns.since)
    by_role = {r["role"]: r for r in rows}
    client, server = by_role["client"], by_role["server"]
    assert set(client_ns.rows_since(agent)) <= INCIDENTAL  # the client's namespace lost nothing
    # Dropped on arrival, after the kernel found the receiving socket (early demux): the server's.
    assert (int(server["drops"]), server["drop_reason"]) == (n, "NETFILTER_DROP"), rows
    assert (int(client["drops"]), client["drop_reason"]) == (0, ""), rows
    # Every dropped try was sent again by the client: n - 1 of them dropped too, the last delivered.
    assert int(client["retransmits"]) == n, rows
    assert int(server["retransmits"]) == 0, rows
    # Open snapshots taken after the drops carry them too.
    snap = agent.rows("SELECT toUInt64(max(o.drops)) AS most, groupUniqArray(o.drop_reason) AS reasons "
                      "FROM blindspot.tcp_connections_open AS o WHERE o.local_port = {port:UInt16} "
                      "AND o.remote_port = {peer:UInt16} AND o.drops > 0", port=got["port"], peer=got["local_port"])
    assert snap == [{"most": n, "reasons": ["NETFILTER_DROP"]}], snap


def test_drop_storm_is_counted(agent: Agent, netns: Netns) -> None:
    n = 20_000
    got = netns.run("udp_storm", "--n", str(n))
    assert got["sent"] == n
    drops = drops_by_reason(agent, netns, lambda m: sum(d for d, _ in m.values()) >= n)
    assert drops == {"NO_SOCKET": (n, 0)}, drops
    # The agent kept up: no record lost, still answering (the canary-style query above answered).
    lost = agent.rows("SELECT counter, toUInt64(sum(value)) AS v FROM blindspot.pipeline_counters "
                      "WHERE counter IN ('lost_ringbuf', 'source_errors:tcp:kernel_drop_keys_full') GROUP BY counter")
    assert all(int(r["v"]) == 0 for r in lost), lost
    assert agent.proc.poll() is None
