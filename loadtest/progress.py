"""A one-line progress bar on a terminal; one line per cell otherwise (CI, a container log)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from loadtest.matrix import Outcome

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()

    def note(self, message: str) -> None:
        self._clear()
        print(message, file=self.out, flush=True)

    def cell(self, outcome: Outcome) -> None:
        self.done += 1
        t, result = outcome.cell.target, outcome.result
        what = f"{t.model} b{t.batch} {t.device} {t.label} c={outcome.cell.concurrency}"
        if result is not None and result.ok:
            figures = result.latency_ms()
            status = (
                f"p50 {figures['p50']:.2f} ms  p99 {figures['p99']:.2f} ms  "
                f"{result.throughput:,.0f}/s"
            )
            if outcome.status != "ok":
                status += f"  ({outcome.reason})"
        else:
            status = f"{outcome.status}: {outcome.reason}"[:110]
        elapsed = time.monotonic() - self.started
        if self.tty:
            width = 24
            filled = round(width * self.done / max(1, self.total))
            bar = "#" * filled + "-" * (width - filled)
            line = f"\r[{bar}] {self.done}/{self.total} {elapsed:4.0f}s {what}  {status}"
            print(line[:200].ljust(120), end="", file=self.out, flush=True)
        else:
            print(
                f"[{self.done}/{self.total} {elapsed:.0f}s] {what}  {status}",
                file=self.out,
                flush=True,
            )

    def _clear(self) -> None:
        if self.tty:
            print("\r" + " " * 200 + "\r", end="", file=self.out, flush=True)

    def finish(self) -> None:
        self._clear()
