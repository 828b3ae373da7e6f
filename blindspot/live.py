"""The terminal view of ``blindspot run``: live counters and the latest closed connections, in the
spirit of bcc's tcplife/tcptop. On a terminal it redraws in place (rich); otherwise it logs a line of
counters every few seconds, so logs stay readable."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.errors import printable
from agent.pipeline import Pipeline

log = logging.getLogger(__name__)
ROWS = 12


def safe_text(value: object) -> Text:
    """Text a local user chose (a process name, a path) as rich Text, never markup: control
    characters become visible escapes (ESC as \\x1b), undecodable bytes U+FFFD."""
    return Text(printable(value))


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


class Snapshot:
    """Rates between two looks at the pipeline's counters."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.last_t = time.monotonic()
        self.last_captured = 0

    def take(self) -> dict[str, Any]:
        now = time.monotonic()
        k = self.p.kernel_counters()
        captured = self.p.counts["captured:tcp_connection"]
        rate = (captured - self.last_captured) / max(now - self.last_t, 1e-6)
        self.last_t, self.last_captured = now, captured
        return {
            "uptime_s": now - self.p.started,
            "conns_per_s": rate,
            "connections": captured,
            "open": self.p.open_connections,
            "rows_written": self.p.counts["rows_written"],
            "lost_kernel": k.get("lost_ringbuf", 0) + k.get("lost_map_full", 0),
            "dropped": self.p.counts["dropped_queue_full"] + self.p.counts["dropped_sink"],
        }


def _render(s: dict[str, Any], recent: list[dict[str, Any]]) -> Group:
    head = Table.grid(padding=(0, 3))
    for _ in range(7):
        head.add_column()
    head.add_row(
        f"up [b]{s['uptime_s']:.0f}s[/]",
        f"conns/s [b]{s['conns_per_s']:.1f}[/]",
        f"closed [b]{s['connections']}[/]",
        f"open [b]{s['open']}[/]",
        f"rows written [b]{s['rows_written']}[/]",
        f"lost in kernel [b]{'[red]' if s['lost_kernel'] else ''}{s['lost_kernel']}[/]",
        f"dropped [b]{s['dropped']}[/]",
    )
    t = Table(title="latest closed connections", expand=True, header_style="bold")
    for col, just in (("PID", "right"), ("COMM", "left"), ("ROLE", "left"), ("LOCAL", "left"),
                      ("REMOTE", "left"), ("TX", "right"), ("RX", "right"), ("MS", "right"),
                      ("HS µs", "right"), ("END", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    shown = list(reversed(recent[-ROWS:]))
    for r in shown:
        t.add_row(
            safe_text(r["pid"]), safe_text(r["comm"]), safe_text(r["role"]),
            safe_text(f"{r['local_addr']}:{r['local_port']}"), safe_text(f"{r['remote_addr']}:{r['remote_port']}"),
            _fmt_bytes(r["bytes_sent"]), _fmt_bytes(r["bytes_received"]), f"{r['duration_ns'] / 1e6:.2f}",
            f"{r['handshake_ns'] / 1e3:.0f}", safe_text(r["close_reason"]),
        )
    for _ in range(ROWS - len(shown)):  # a fixed height: the frame redraws in place
        t.add_row(*[""] * 10)
    return Group(head, t)


def show(p: Pipeline, stop: threading.Event, interval_s: float = 1.0) -> None:
    """Run until ``stop``: redraw on a terminal, else log a counters line every 10 s."""
    snap = Snapshot(p)
    if sys.stdout.isatty():
        with Live(_render(snap.take(), []), refresh_per_second=4, screen=False) as live:
            while not stop.wait(interval_s):
                try:
                    live.update(_render(snap.take(), list(p.recent)))
                except Exception:  # the view must never die of one odd row
                    log.exception("live view: could not draw this frame")
        return
    while not stop.wait(10.0):
        s = snap.take()
        log.info(
            "conns/s %.1f closed %d open %d rows_written %d lost_kernel %d dropped %d",
            s["conns_per_s"], s["connections"], s["open"], s["rows_written"], s["lost_kernel"], s["dropped"],
        )
