"""gRPC linking on the real kernel (GoTlsSource with ``go_h2c``): a Go gRPC gateway (grpc-go v1.56.3
and v1.67.1, tests/go_grpc/grpcapp/gateway.go) serves each inbound Health.Check by calling one of two
upstream gRPC servers, picked by the call's x-gray-version metadata, which it forwards with the call's
x-request-id. Each outbound row of the gateway must carry, as parent_request_id, the request_id of
exactly the inbound row whose handler made it: the test gives every call its own x-request-id (the
upstream sees it too) and its version (which upstream it reaches), so the pairing is checked against
what the test did, and every row that should have no parent has none.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests import gobuild, gobuild_tls
from tests.gobuild_tls import Capture
from tests.procs import spawn

pytestmark = [pytest.mark.root, pytest.mark.go]

METHOD = "/grpc.health.v1.Health/Check"
# (Go toolchain, grpc-go): the h2c tests' matrix, the current grpc-go on the newest Go first.
MATRIX = sorted(gobuild_tls.GRPC_MATRIX, reverse=True)
# Ten calls in batches made at once on the client's one connection: (id suffix, x-gray-version).
BATCHES = [[("0", "v1")], [("1", "v2")], [("2", "v1"), ("3", "v2"), ("4", "v1"), ("5", "v2")],
           [("6", "v2"), ("7", "v1")], [("8", "v1")], [("9", "v2")]]


@pytest.fixture(scope="module")
def cap() -> Any:
    if not gobuild.go_available():
        pytest.skip("no go command")
    c = Capture(go_h2c=True)
    yield c
    c.close()


def _start(cap: Capture, build: gobuild.GoBuild, *args: str) -> tuple[subprocess.Popen, str]:
    p = spawn([str(build.bin("grpcapp")), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("LISTEN"), line
    cap.wait_traced(p.pid)
    return p, line.split()[1]


def _fanout(cap: Capture, build: gobuild.GoBuild, addr: str) -> subprocess.Popen:
    cli = spawn([str(build.bin("grpcapp")), "-mode", "grpc-fanout", "-addr", addr], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    assert cli.stdout.readline().strip() == "READY"  # type: ignore[union-attr]
    cap.wait_traced(cli.pid)
    return cli


def _calls(cli: subprocess.Popen, batch: list[tuple[str, str]]) -> list[str]:
    cli.stdin.write("\t".join(f"{i}:{v}" for i, v in batch) + "\n")  # type: ignore[union-attr]
    return cli.stdout.readline().split()  # type: ignore[union-attr]


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _gateway(cap: Capture, build: gobuild.GoBuild) -> tuple[subprocess.Popen, ...]:
    up1, a1 = _start(cap, build, "-mode", "grpc-server")
    up2, a2 = _start(cap, build, "-mode", "grpc-server")
    gw, ag = _start(cap, build, "-mode", "grpc-gateway", "-up1", a1, "-up2", a2)
    return up1, up2, gw, _fanout(cap, build, ag)


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {r["x_request_id"]: r for r in rows}
    assert len(out) == len(rows), [r["x_request_id"] for r in rows]
    return out


@pytest.mark.parametrize(("go", "grpc"), MATRIX)
def test_gateway_outbound_rows_linked_to_their_inbound(cap: Capture, go: str, grpc: str) -> None:
    build = gobuild_tls.build_grpc(go, "plain", grpc)
    before = cap.src.counters()
    up1, up2, gw, cli = procs = _gateway(cap, build)
    try:
        batches = [[(f"{build.id}-{i}", v) for i, v in b] for b in BATCHES]
        for b in batches:
            assert _calls(cli, b) == ["RESULT", *["0"] * len(b)], b
        calls = dict(c for b in batches for c in b)  # x-request-id -> version
        n = len(calls)
        gw_rows = cap.wait_rows(gw.pid, 2 * n)
        inbound = _by_id([r for r in gw_rows if r["side"] == "server"])
        outbound = _by_id([r for r in gw_rows if r["side"] == "client"])
        ups = {"v1": _by_id(cap.wait_rows(up1.pid, 5)), "v2": _by_id(cap.wait_rows(up2.pid, 5))}
        client = _by_id(cap.wait_rows(cli.pid, n))
        assert len(gw_rows) == 2 * n and set(inbound) == set(outbound) == set(client) == set(calls)
        for v, rows in ups.items():
            assert set(rows) == {i for i, cv in calls.items() if cv == v}, v
        every = gw_rows + [r for rows in ups.values() for r in rows.values()] + list(client.values())
        assert {(r["protocol"], r["route"], r["grpc_status"], r["end_reason"]) for r in every} == {
            ("grpc", METHOD, "0", "end")}
        assert len({r["request_id"] for r in every}) == len(every) == 4 * n  # no id shared
        for rid, version in calls.items():
            i, o, u, c = inbound[rid], outbound[rid], ups[version][rid], client[rid]
            # The pairing: the gateway's call for x-request-id rid is the child of its inbound rid.
            assert o["parent_request_id"] == i["request_id"] != 0, rid
            assert i["parent_request_id"] == u["parent_request_id"] == c["parent_request_id"] == 0, rid
            assert (o["x_gray_version"], u["x_gray_version"], i["x_gray_version"]) == (version,) * 3
            # The outbound row is the call to the upstream the version picked, and that upstream served it.
            assert o["remote_port"] == u["local_port"] and o["local_port"] == u["remote_port"], rid
            assert i["remote_port"] == c["local_port"] and i["local_port"] == c["remote_port"], rid
            assert i["time"] <= o["time"] and o["end_time"] <= i["end_time"], rid
    finally:
        _stop(*reversed(procs))
    after = cap.src.counters()
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Probe hits of linking: one handleStream entry per inbound stream (the gateway's 10 and the
    # upstreams' 10), one NewStream RET per outbound stream (the gateway's 10 linked, the client's 10
    # on goroutines no handler began).
    assert (d["grpc_link_inbound_streams"], d["grpc_link_records"], d["grpc_linked"], d["grpc_link_no_handler"],
            d["grpc_link_no_inbound"], d["grpc_link_unused"]) == (2 * n, n, n, n, 0, 0)
    assert after["lost_ringbuf"] == 0 and after["h2_lost"] == 0


def test_call_from_a_child_goroutine_unlinked_and_counted(cap: Capture) -> None:
    """A handler that calls from a goroutine of its own (x-gray-version v2-async): the outbound stream
    is opened on a goroutine no handleStream began. Not linked (never guessed), counted."""
    build = gobuild_tls.build_grpc(MATRIX[0][0], "plain", MATRIX[0][1])
    before = cap.src.counters()
    _up1, up2, gw, cli = procs = _gateway(cap, build)
    try:
        batch = [(f"{build.id}-async", "v2-async"), (f"{build.id}-sync", "v1")]
        assert _calls(cli, batch) == ["RESULT", "0", "0"]
        gw_rows = cap.wait_rows(gw.pid, 4)
        out = _by_id([r for r in gw_rows if r["side"] == "client"])
        inb = _by_id([r for r in gw_rows if r["side"] == "server"])
        assert cap.wait_rows(up2.pid, 1)[0]["x_request_id"] == f"{build.id}-async"
        assert out[f"{build.id}-async"]["parent_request_id"] == 0
        assert out[f"{build.id}-sync"]["parent_request_id"] == inb[f"{build.id}-sync"]["request_id"] != 0
    finally:
        _stop(*reversed(procs))
    after = cap.src.counters()
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # no handler: the client's two calls and the gateway's async one
    assert (d["grpc_link_records"], d["grpc_linked"], d["grpc_link_no_handler"]) == (1, 1, 3)


def test_stripped_gateway_not_linked_counted(cap: Capture) -> None:
    """Without DWARF the grpc-go struct offsets are unknown: no link probes, no link, the reason counted."""
    build = gobuild_tls.build_grpc(MATRIX[0][0], "stripped", MATRIX[0][1])
    before = cap.src.counters()
    _up1, _up2, gw, cli = procs = _gateway(cap, build)
    try:
        assert _calls(cli, [(f"{build.id}-s0", "v1"), (f"{build.id}-s1", "v2")]) == ["RESULT", "0", "0"]
        gw_rows = cap.wait_rows(gw.pid, 4)
        assert sorted((r["side"], r["x_request_id"], r["parent_request_id"]) for r in gw_rows) == [
            ("client", f"{build.id}-s0", 0), ("client", f"{build.id}-s1", 0),
            ("server", f"{build.id}-s0", 0), ("server", f"{build.id}-s1", 0)]
    finally:
        _stop(*reversed(procs))
    after = cap.src.counters()
    assert after["grpc_link_binary_rejected:no_dwarf"] >= 1
    assert after["grpc_link_records"] == before["grpc_link_records"]
    assert after["grpc_link_inbound_streams"] == before["grpc_link_inbound_streams"]
