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

__all__ = ["BatchStats", "Duration", "StatisticsBook", "VersionStats"]


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
        self,
        model: str,
        version: int,
        *,
        rows: int,
        total_ns: int,
        queue_ns: int,
        input_ns: int,
        compute_ns: int,
        output_ns: int,
        batch_rows: int,
        own_execution: bool,
    ) -> None:
        """One request answered: `compute_ns` is the framework call it ran in, of `batch_rows`
        rows; `own_execution` when that call was the request's alone (else `record_batch`
        counted it)."""
        with self._lock:
            stats = self._entry(model, version)
            stats.success.add(total_ns)
            stats.queue.add(queue_ns)
            stats.compute_input.add(input_ns)
            stats.compute_infer.add(compute_ns)
            stats.compute_output.add(output_ns)
            stats.inference_count += rows
            stats.last_inference_ms = time.time_ns() // 1_000_000
            batch = stats.batches.setdefault(batch_rows, BatchStats())
            if own_execution:
                stats.execution_count += 1
                batch.compute_input.add(input_ns)
                batch.compute_infer.add(compute_ns)
                batch.compute_output.add(output_ns)
            else:
                batch.compute_input.ns += input_ns
                batch.compute_output.ns += output_ns

    def record_batch(self, model: str, version: int, rows: int, compute_ns: int) -> None:
        """One framework call of a batch of `rows` rows."""
        with self._lock:
            stats = self._entry(model, version)
            stats.execution_count += 1
            batch = stats.batches.setdefault(rows, BatchStats())
            batch.compute_input.count += 1
            batch.compute_infer.add(compute_ns)
            batch.compute_output.count += 1

    def record_failure(self, model: str, version: int, total_ns: int) -> None:
        with self._lock:
            self._entry(model, version).fail.add(total_ns)

    def snapshot(self) -> dict[tuple[str, int], VersionStats]:
        with self._lock:
            return {key: stats.copy() for key, stats in self._stats.items()}
