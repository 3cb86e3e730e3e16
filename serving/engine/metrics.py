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
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.rpc.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from serving.engine.manager import ModelManager

__all__ = ["DeviceCollector", "InferenceMetrics", "ModelCollector"]

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_VERSION_LABELS = ("model", "version", "framework", "runtime", "device")


class _VersionSeries:
    """The children of one (model, version, runtime): looked up once, then reused."""

    __slots__ = ("batch", "compute", "queue", "requests", "total")

    def __init__(self, metrics: InferenceMetrics, labels: tuple[str, ...]) -> None:
        self.total = metrics.total.labels(*labels)
        self.queue = metrics.queue.labels(*labels)
        self.compute = metrics.compute.labels(*labels)
        self.batch = metrics.batch.labels(*labels)
        self.requests: dict[str, Counter] = {}


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
        self._series: dict[tuple[str, int, str], _VersionSeries] = {}
        self._lock = threading.Lock()

    def series(self, model: str, version: int, runtime: str) -> _VersionSeries:
        key = (model, version, runtime)
        found = self._series.get(key)
        if found is None:
            with self._lock:
                labels = (model, str(version), self.framework, runtime, self.device)
                found = self._series.setdefault(key, _VersionSeries(self, labels))
        return found

    def request(self, model: str, version: int, runtime: str, code: str) -> None:
        series = self.series(model, version, runtime)
        counter = series.requests.get(code)
        if counter is None:
            labels = (model, str(version), self.framework, runtime, self.device, code)
            counter = series.requests.setdefault(code, self.requests.labels(*labels))
        counter.inc()

    def succeeded(
        self,
        model: str,
        version: int,
        runtime: str,
        *,
        total_ns: int,
        queue_ns: int,
        compute_ns: int,
    ) -> None:
        series = self.series(model, version, runtime)
        series.total.observe(total_ns / 1e9)
        series.queue.observe(queue_ns / 1e9)
        series.compute.observe(compute_ns / 1e9)
        self.request(model, version, runtime, "OK")

    def executed(self, model: str, version: int, runtime: str, rows: int) -> None:
        self.series(model, version, runtime).batch.observe(rows)


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
