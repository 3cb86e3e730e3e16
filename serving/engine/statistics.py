"""Per model-version counters behind ModelStatistics (Triton's durations, in nanoseconds).

As in Triton, every successful request adds one to each of `queue`, `compute_input` (decoding
its inputs), `compute_infer` (the framework call it ran in: its batch's, when batched) and
`compute_output` (encoding its answer), all under one lock: Triton's perf_analyzer refuses
statistics whose compute counts differ, and a snapshot taken between two updates would.

`batches` counts framework calls by their rows. An unbatched request is its own call; a
batch's compute_input/compute_output hold the decoding/encoding time of the requests it ran.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from serving.engine.timings import Timings

__all__ = ["BatchStats", "Duration", "StatisticsBook", "VersionStatistics", "VersionStats"]


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def copy(self) -> Duration:
        return Duration(self.count, self.ns)


@dataclass(slots=True)
class BatchStats:
    """Framework calls of one size (Triton's InferBatchStatistics)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def copy(self) -> BatchStats:
        return BatchStats(
            self.compute_input.copy(), self.compute_infer.copy(), self.compute_output.copy()
        )


@dataclass(slots=True)
class VersionStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows inferred (Triton counts batch elements)
    execution_count: int = 0  # framework calls; fewer than requests when batching
    last_inference_ms: int = 0
    # Rows in a framework call -> those calls' counts and times.
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def copy(self) -> VersionStats:
        return VersionStats(
            self.success.copy(),
            self.fail.copy(),
            self.queue.copy(),
            self.compute_input.copy(),
            self.compute_infer.copy(),
            self.compute_output.copy(),
            self.inference_count,
            self.execution_count,
            self.last_inference_ms,
            {rows: batch.copy() for rows, batch in self.batches.items()},
        )


class VersionStatistics:
    """The counters of one model version, written under the book's lock."""

    __slots__ = ("_lock", "_stats")

    def __init__(self, stats: VersionStats, lock: threading.Lock) -> None:
        self._stats = stats
        self._lock = lock

    def succeeded(self, timings: Timings) -> None:
        """One request answered (see `Timings`: a batched request's framework call was
        counted by `batch_ran`; the request adds its decoding and encoding to it)."""
        with self._lock:
            stats = self._stats
            stats.success.add(timings.total_ns)
            stats.queue.add(timings.queue_ns)
            stats.compute_input.add(timings.input_ns)
            stats.compute_infer.add(timings.compute_ns)
            stats.compute_output.add(timings.output_ns)
            stats.inference_count += timings.rows
            stats.last_inference_ms = time.time_ns() // 1_000_000
            batch = stats.batches.setdefault(timings.batch_rows, BatchStats())
            if timings.own_execution:
                stats.execution_count += 1
                batch.compute_input.add(timings.input_ns)
                batch.compute_infer.add(timings.compute_ns)
                batch.compute_output.add(timings.output_ns)
            else:
                batch.compute_input.ns += timings.input_ns
                batch.compute_output.ns += timings.output_ns

    def batch_ran(self, rows: int, compute_ns: int) -> None:
        """One framework call of a dynamic batch of `rows` rows."""
        with self._lock:
            stats = self._stats
            stats.execution_count += 1
            batch = stats.batches.setdefault(rows, BatchStats())
            batch.compute_input.count += 1
            batch.compute_infer.add(compute_ns)
            batch.compute_output.count += 1

    def failed(self, total_ns: int) -> None:
        with self._lock:
            self._stats.fail.add(total_ns)


class StatisticsBook:
    """Every version's counters behind one lock, so a snapshot is consistent across them."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], VersionStats] = {}
        self._lock = threading.Lock()

    def version(self, model: str, version: int) -> VersionStatistics:
        """The counters of one version, created empty on first use."""
        with self._lock:
            stats = self._stats.setdefault((model, version), VersionStats())
        return VersionStatistics(stats, self._lock)

    def snapshot(self) -> dict[tuple[str, int], VersionStats]:
        with self._lock:
            return {key: stats.copy() for key, stats in self._stats.items()}
