"""Per model-version counters behind ModelStatistics (Triton's durations, in nanoseconds)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

__all__ = ["Duration", "StatisticsBook", "VersionStats"]


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass(slots=True)
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows inferred (Triton counts batch elements)
    execution_count: int = 0  # framework calls; fewer than requests when batching
    last_inference_ms: int = 0
    # Rows in a framework call -> how many calls had that size and their time.
    batches: dict[int, Duration] = field(default_factory=dict)


class StatisticsBook:
    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], VersionStats] = {}
        self._lock = threading.Lock()

    def _entry(self, model: str, version: int) -> VersionStats:
        key = (model, version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats.setdefault(key, VersionStats())
        return stats

    def record_success(
        self, model: str, version: int, *, rows: int, total_ns: int, queue_ns: int, compute_ns: int
    ) -> None:
        """One request answered; `compute_ns` is the framework call it ran in."""
        with self._lock:
            stats = self._entry(model, version)
            stats.success.add(total_ns)
            stats.queue.add(queue_ns)
            stats.compute_infer.add(compute_ns)
            stats.inference_count += rows
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(self, model: str, version: int, rows: int, compute_ns: int) -> None:
        """One framework call of `rows` rows (a request, or a batch of them)."""
        with self._lock:
            stats = self._entry(model, version)
            stats.execution_count += 1
            stats.batches.setdefault(rows, Duration()).add(compute_ns)

    def record_failure(self, model: str, version: int, total_ns: int) -> None:
        with self._lock:
            self._entry(model, version).fail.add(total_ns)

    def snapshot(self) -> dict[tuple[str, int], VersionStats]:
        with self._lock:
            return {
                key: VersionStats(
                    Duration(s.success.count, s.success.ns),
                    Duration(s.fail.count, s.fail.ns),
                    Duration(s.queue.count, s.queue.ns),
                    Duration(s.compute_infer.count, s.compute_infer.ns),
                    s.inference_count,
                    s.execution_count,
                    s.last_inference_ms,
                    {rows: Duration(d.count, d.ns) for rows, d in s.batches.items()},
                )
                for key, s in self._stats.items()
            }
