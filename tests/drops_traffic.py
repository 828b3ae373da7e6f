"""Traffic that makes the kernel drop packets in known ways, run inside a network namespace of the
test's own (``ip netns exec NS python -m tests.drops_traffic SCENARIO``). Each scenario prints one JSON
line: what it did and the kernel's own counters of it, for the test to check the agent's rows against."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from typing import Any


def _nstat(*names: str) -> dict[str, int]:
    """This namespace's kernel SNMP counters (absolute: nstat -a), e.g. TcpExtListenOverflows."""
    out = subprocess.run(["nstat", "-az", *names], capture_output=True, text=True, check=True).stdout
    vals = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in names:
            vals[parts[0]] = int(parts[1])
    return vals


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def no_socket() -> dict[str, Any]:
    """One SYN to a port nobody listens on: dropped with NO_SOCKET (the kernel answers with an RST)."""
    port = _free_port()
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", port))
        refused = False
    except ConnectionRefusedError:
        refused = True
    local = c.getsockname()[1]
    c.close()
    return {"port": port, "local_port": local, "refused": refused}


def udp_storm(n: int) -> dict[str, Any]:
    """``n`` UDP datagrams to a port with no socket: a drop storm, one NO_SOCKET drop each."""
    port = _free_port()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        s.sendto(b"x", ("127.0.0.1", port))
    # Loopback delivers (and drops) in the sender's own softirq: its CPU time includes the drop path.
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    s.close()
    return {"port": port, "sent": n, "seconds": elapsed, "cpu_s": cpu}


def listen_overflow() -> dict[str, Any]:
    """A listener (backlog 1, TCP_DEFER_ACCEPT so the handshakes' bare ACKs wait) whose accept queue is
    full when the first data of a third connection completes its handshake: that segment is dropped
    with TCP_LISTEN_OVERFLOW, once (the queue gets room again well before the client's retransmission,
    at least 200 ms later, which then gets through); the namespace's TcpExtListenOverflows says how
    many times it happened."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    lst.listen(1)  # the accept queue holds backlog + 1 = 2
    port = lst.getsockname()[1]

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port))

    late = connect()  # SYN while the queue is empty; its handshake waits for data (defer accept)
    first, second = connect(), connect()
    first.sendall(b"1")
    second.sendall(b"2")  # both accepted by the kernel: the queue is full
    time.sleep(0.05)
    late.sendall(b"3")  # completes late's handshake: the queue is full, dropped
    time.sleep(0.05)
    accepted = [lst.accept()[0] for _ in range(2)]  # room again: late's retransmission gets in
    lst.settimeout(5)
    accepted.append(lst.accept()[0])
    got = sorted(a.recv(1) for a in accepted)
    # The kernel's own count (1 unless this process stalled past the client's retransmission timer):
    # each overflow is one dropped try of late's segment.
    overflows = _nstat("TcpExtListenOverflows").get("TcpExtListenOverflows", 0)
    late_port = late.getsockname()[1]
    time.sleep(0.1)
    for s in (*accepted, first, second, late):
        s.close()
    lst.close()
    return {"port": port, "late_port": late_port, "overflows": overflows, "received": [g.decode() for g in got]}


SERVER_ADDR, CLIENT_ADDR = "10.213.0.2", "10.213.0.1"  # the veth pair of tests/test_tcp_drops.py


def echo_server() -> None:
    """One connection on SERVER_ADDR: read 100 bytes, answer ``ok``, wait for the peer to close."""
    lst = socket.socket()
    lst.bind((SERVER_ADDR, 0))
    lst.listen(1)
    print(json.dumps({"port": lst.getsockname()[1]}), flush=True)
    s, _ = lst.accept()
    got = b""
    while len(got) < 100:
        got += s.recv(100)
    s.sendall(b"ok")
    s.recv(1)  # until the client closes
    s.close()
    lst.close()


def netfilter(hold_s: float, server_ns: str) -> dict[str, Any]:
    """A connection from this namespace to a server in ``server_ns`` (over a veth pair, so the
    packets take the receive path of a real interface), whose data the server's namespace drops on
    arrival with an nftables rule (input hook) for ``hold_s``: the client retransmits, each try is
    dropped with NETFILTER_DROP, then the rule goes and a retransmission gets through. Input, not
    output: a packet refused on the way out is a local send error to TCP (sent again later, not a
    retransmission), one lost after leaving is loss. The rule's named counter says how many packets
    it dropped. The connection stays open a while after (open snapshots see its drops)."""
    def in_server_ns(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", server_ns, *argv], text=True, check=True, **kw)

    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-m", "tests.drops_traffic",
                               "echo_server"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        c = socket.create_connection((SERVER_ADDR, port))
        rules = (f"add table inet bs_drop_test\n"
                 f"add counter inet bs_drop_test dropped\n"
                 f"add chain inet bs_drop_test inp {{ type filter hook input priority 0; }}\n"
                 f"add rule inet bs_drop_test inp tcp dport {port} counter name dropped drop\n")
        in_server_ns("nft", "-f", "-", input=rules)
        c.sendall(b"d" * 100)
        time.sleep(hold_s)
        in_server_ns("nft", "flush", "chain", "inet", "bs_drop_test", "inp")
        listed = json.loads(in_server_ns("nft", "-j", "list", "counter", "inet", "bs_drop_test", "dropped",
                                         capture_output=True).stdout)
        dropped = next(o["counter"]["packets"] for o in listed["nftables"] if "counter" in o)
        in_server_ns("nft", "delete", "table", "inet", "bs_drop_test")
        c.settimeout(10)
        answer = c.recv(2)
        local = c.getsockname()[1]
        time.sleep(2.5)  # open long enough for snapshots
        c.close()
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return {"port": port, "local_port": local, "dropped": dropped, "answer": answer.decode()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["no_socket", "udp_storm", "listen_overflow", "netfilter", "echo_server"])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--server-ns", default="")
    a = p.parse_args()
    if a.scenario == "echo_server":
        echo_server()
        return
    if a.scenario == "no_socket":
        out = no_socket()
    elif a.scenario == "udp_storm":
        out = udp_storm(a.n)
    elif a.scenario == "listen_overflow":
        out = listen_overflow()
    else:
        out = netfilter(a.hold, a.server_ns)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
