"""The books of every model version: the Triton statistics (`ModelStatistics`, see
`serving.engine.statistics`) and the Prometheus inference metrics (`serving.engine.metrics`),
written by one call per request so that the two always count the same requests.

The data plane resolves a version's ledger once per request (one dictionary lookup; the
statistics entry and the metric label children behind it are made once per version) and
ends every request with exactly one of `succeeded` or `failed`. A dynamic batch's framework
call, shared by several requests, is written once by `batch_ran`.

Both books keep their own formats: Triton's durations and per-batch-size counts, and
Prometheus's labelled counters and histograms in seconds.
"""

from __future__ import annotations

import threading

import grpc
from prometheus_client import Gauge

from serving.engine.metrics import InferenceMetrics, VersionMetrics
from serving.engine.statistics import StatisticsBook, VersionStatistics
from serving.engine.timings import Timings

__all__ = ["Ledger", "VersionLedger"]


class VersionLedger:
    """One version's statistics and metrics. `in_flight` is its requests-in-flight gauge."""

    __slots__ = ("_metrics", "_statistics", "in_flight")

    def __init__(self, statistics: VersionStatistics, metrics: VersionMetrics) -> None:
        self._statistics = statistics
        self._metrics = metrics
        self.in_flight: Gauge = metrics.in_flight

    def succeeded(self, runtime: str, timings: Timings) -> None:
        self._statistics.succeeded(timings)
        self._metrics.succeeded(runtime, timings)

    def failed(self, runtime: str, code: grpc.StatusCode, total_ns: int) -> None:
        """A request that ended with `code` after `total_ns` in the data plane (`runtime`
        is "unknown" when it failed before its runtime was)."""
        self._statistics.failed(total_ns)
        self._metrics.failed(runtime, code.name)

    def batch_ran(self, runtime: str, rows: int, compute_ns: int) -> None:
        """One framework call of a dynamic batch (its requests follow with `succeeded`)."""
        self._statistics.batch_ran(rows, compute_ns)
        self._metrics.batch_ran(runtime, rows)


class Ledger:
    """The ledgers of every version one data plane has served, made on first use."""

    def __init__(self, statistics: StatisticsBook, metrics: InferenceMetrics) -> None:
        self.statistics = statistics
        self.metrics = metrics
        self._versions: dict[tuple[str, int], VersionLedger] = {}
        self._lock = threading.Lock()

    def version(self, model: str, version: int) -> VersionLedger:
        key = (model, version)
        found = self._versions.get(key)
        if found is None:
            with self._lock:
                found = self._versions.get(key)
                if found is None:
                    found = VersionLedger(
                        self.statistics.version(model, version),
                        self.metrics.version(model, version),
                    )
                    self._versions[key] = found
        return found
