"""Prometheus metrics of the inference engine, in the server's registry
(`serving.rpc.metrics.new_registry`). Names (Prometheus conventions: base units, `_total`
counters, `_seconds` durations):

    twinserve_inference_requests_total{model,version,framework,runtime,device,code}
    twinserve_inference_request_duration_seconds{model,version,framework,runtime,device}
    twinserve_inference_queue_duration_seconds{...}      Triton's split: queue, compute, total
    twinserve_inference_compute_duration_seconds{...}
    twinserve_inference_batch_size{...}                  rows per framework call
    twinserve_inference_requests_in_flight{model,framework}
    twinserve_model_state{model,version,framework,state} 1 for the state it is in
    twinserve_model_load_duration_seconds{model,version,framework}
    twinserve_device_memory_*_bytes{device}              when the backend reports a GPU

Inference metrics carry a model label only once the model is found (a request naming an
unknown model is counted by the gRPC metrics alone), so clients cannot grow the label set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.engine.timings import Timings
from serving.rpc.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from serving.engine.manager import ModelManager

__all__ = ["DeviceCollector", "InferenceMetrics", "ModelCollector", "VersionMetrics"]

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_VERSION_LABELS = ("model", "version", "framework", "runtime", "device")


class _RuntimeSeries:
    """The children of one (model, version, runtime): looked up once, then reused."""

    __slots__ = ("_labels", "_metrics", "batch", "compute", "queue", "requests", "total")

    def __init__(self, metrics: InferenceMetrics, labels: tuple[str, ...]) -> None:
        self.total = metrics.total.labels(*labels)
        self.queue = metrics.queue.labels(*labels)
        self.compute = metrics.compute.labels(*labels)
        self.batch = metrics.batch.labels(*labels)
        self.requests: dict[str, Counter] = {}
        self._metrics = metrics
        self._labels = labels

    def request(self, code: str) -> Counter:
        counter = self.requests.get(code)
        if counter is None:
            child = self._metrics.requests.labels(*self._labels, code)
            counter = self.requests.setdefault(code, child)
        return counter


class VersionMetrics:
    """The series of one model version: its in-flight gauge and, per runtime, its request
    counters and histograms."""

    __slots__ = ("_labels", "_metrics", "_runtimes", "in_flight")

    def __init__(self, metrics: InferenceMetrics, model: str, version: int) -> None:
        self.in_flight = metrics.in_flight.labels(model, metrics.framework)
        self._metrics = metrics
        self._labels = (model, str(version), metrics.framework)
        self._runtimes: dict[str, _RuntimeSeries] = {}

    def _series(self, runtime: str) -> _RuntimeSeries:
        found = self._runtimes.get(runtime)
        if found is None:
            labels = (*self._labels, runtime, self._metrics.device)
            found = self._runtimes.setdefault(runtime, _RuntimeSeries(self._metrics, labels))
        return found

    def succeeded(self, runtime: str, timings: Timings) -> None:
        """One request answered; its framework call too when it was the request's own (a
        dynamic batch's is counted by `batch_ran`)."""
        series = self._series(runtime)
        series.total.observe(timings.total_ns / 1e9)
        series.queue.observe(timings.queue_ns / 1e9)
        series.compute.observe(timings.compute_ns / 1e9)
        if timings.own_execution:
            series.batch.observe(timings.batch_rows)
        series.request("OK").inc()

    def failed(self, runtime: str, code: str) -> None:
        self._series(runtime).request(code).inc()

    def batch_ran(self, runtime: str, rows: int) -> None:
        self._series(runtime).batch.observe(rows)


class InferenceMetrics:
    """What the data plane measures per model version and runtime."""

    def __init__(self, registry: CollectorRegistry, *, framework: str, device: str) -> None:
        self.framework = framework
        self.device = device
        self.requests = Counter(
            "twinserve_inference_requests",
            "Inference requests for a loaded model, by outcome (gRPC status code).",
            (*_VERSION_LABELS, "code"),
            registry=registry,
        )
        self.total = Histogram(
            "twinserve_inference_request_duration_seconds",
            "Successful requests: time in the data plane (queue + compute + validation).",
            _VERSION_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue = Histogram(
            "twinserve_inference_queue_duration_seconds",
            "Successful requests: time waiting in the dynamic batcher's queue (0 unbatched).",
            _VERSION_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute = Histogram(
            "twinserve_inference_compute_duration_seconds",
            "Successful requests: the framework call they ran in.",
            _VERSION_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch = Histogram(
            "twinserve_inference_batch_size",
            "Rows in each framework call (a request, or a dynamic batch of them).",
            _VERSION_LABELS,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "twinserve_inference_requests_in_flight",
            "Requests inside the data plane now (queued or computing).",
            ("model", "framework"),
            registry=registry,
        )

    def version(self, model: str, version: int) -> VersionMetrics:
        """The series of one version (its label children are made on first use)."""
        return VersionMetrics(self, model, version)


class ModelCollector(Collector):
    """Model states and load times, read from the manager at scrape time."""

    def __init__(self, manager: ModelManager, framework: str) -> None:
        self.manager = manager
        self.framework = framework

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "twinserve_model_state",
            "1 for the state each model version is in (READY, UNAVAILABLE).",
            labels=("model", "version", "framework", "state"),
        )
        load = GaugeMetricFamily(
            "twinserve_model_load_duration_seconds",
            "How long loading (and warming) each loaded version took.",
            labels=("model", "version", "framework"),
        )
        for name, version, current, seconds in self.manager.states():
            for candidate in ("READY", "UNAVAILABLE"):
                state.add_metric(
                    (name, version, self.framework, candidate), float(candidate == current)
                )
            if seconds is not None:
                load.add_metric((name, version, self.framework), seconds)
        return [state, load]


class DeviceStats(Protocol):
    """A backend that can say what its accelerator holds (optional, see TorchBackend)."""

    def device_stats(self) -> Mapping[str, float]: ...


class DeviceCollector(Collector):
    """Accelerator memory and utilisation from a backend hook; nothing on a CPU."""

    def __init__(self, read: Callable[[], Mapping[str, float]], device: str) -> None:
        self.read = read
        self.device = device

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self.read()
        except Exception:
            logger.debug("device statistics unavailable", exc_info=True)
            return []
        families = []
        for key, value in sorted(stats.items()):
            family = GaugeMetricFamily(
                f"twinserve_device_{key}",
                f"Accelerator {key.replace('_', ' ')} as the framework reports it.",
                labels=("device",),
            )
            family.add_metric((self.device,), value)
            families.append(family)
        return families
