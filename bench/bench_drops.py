"""What a packet drop costs with the agent attached, and that a drop storm is counted, not queued.

    .venv/bin/python bench/bench_drops.py [--n 200000] [--rounds 3]

A drop storm made on purpose: ``--n`` UDP datagrams to a port with no socket, inside a network
namespace of the bench's own, each one dropped by the kernel (NO_SOCKET). Loopback delivers in the
sender's own softirq, so the sender's CPU time contains the whole drop path, probe included. Rounds
alternate untraced / traced (`blindspot run` attached), and report per drop:

1. the probe's own time: run_time_ns / run_cnt of the agent's skb:kfree_skb program
   (kernel.bpf_stats_enabled, switched on for the run and restored after);
2. the sender's CPU per datagram untraced and traced, and the difference;
3. the agent's CPU over the traced storm (it should not grow with the storm: drops are counted in
   kernel maps, no record per drop), and whether packet_drops holds exactly ``--n`` for the namespace.
Needs root. Run alone on the machine: other load makes CPU numbers meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, cpu_seconds
from tests.embedded_agent import running_agent

DROPS_SQL = """SELECT toUInt64(sum(drops)) AS n FROM blindspot.packet_drops
WHERE netns = {ns:UInt32} AND time >= fromUnixTimestamp64Nano({t:Int64})"""
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def storm(ns: str, n: int) -> dict:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.drops_traffic", "udp_storm",
                          "--n", str(n)], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def prog_ids(pid: int) -> set[int]:
    """BPF programs whose fds process ``pid`` holds (fdinfo's prog_id)."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fd.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def probe_stats(pid: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the agent's kfree_skb program."""
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    mine = prog_ids(pid)
    for p in progs:
        if p["id"] in mine and "kfree_skb" in p.get("name", ""):
            return int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0))
    raise RuntimeError("the agent's skb:kfree_skb program is not loaded (kernel without drop reasons?)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    ns = f"bs-bench-drops-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    stats_before = STATS.read_text().strip()
    rounds = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        inode = os.stat(f"/run/netns/{ns}").st_ino
        storm(ns, 1000)  # warm-up
        STATS.write_text("1")
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.rounds):
                untraced = storm(ns, a.n)
                with running_agent(Path(tmp) / f"data{r}", snapshot_interval_s=1.0) as agent:
                    t0 = time.time_ns()
                    cpu0, (rt0, cnt0) = cpu_seconds(agent.proc.pid), probe_stats(agent.proc.pid)
                    traced = storm(ns, a.n)
                    rt1, cnt1 = probe_stats(agent.proc.pid)
                    agent_cpu = cpu_seconds(agent.proc.pid) - cpu0
                    rows = agent.wait_rows(DROPS_SQL, lambda rs: bool(rs) and int(rs[0]["n"] or 0) >= a.n,
                                           ns=inode, t=t0)
                    counted = int(rows[0]["n"] or 0) if rows else 0
                rounds.append({
                    "round": r + 1,
                    "probe_ns_per_drop": round((rt1 - rt0) / max(cnt1 - cnt0, 1), 1),
                    "probe_runs": cnt1 - cnt0,
                    "sender_us_per_drop_untraced": round(untraced["cpu_s"] / a.n * 1e6, 3),
                    "sender_us_per_drop_traced": round(traced["cpu_s"] / a.n * 1e6, 3),
                    "send_rate_ratio": round(untraced["seconds"] / traced["seconds"], 3),
                    "agent_cpu_s_during_storm": round(agent_cpu, 3),
                    "drops_counted": counted, "drops_made": a.n, "exact": counted == a.n,
                })
                print(json.dumps(rounds[-1]), flush=True)
    finally:
        STATS.write_text(stats_before)
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
