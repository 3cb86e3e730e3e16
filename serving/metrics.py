"""Prometheus metrics of a service (and, through `RpcMetrics` and `MetricsServer`, of the
gateway), each process in a registry of its own served on its metrics port.

One registry per server rather than the global one: a test process runs many servers, and
each must report only its own models and calls. The metrics are still declared once, here.

Names (Prometheus conventions: base units, `_total` counters, `_seconds` durations):

    twinserve_inference_requests_total{model,version,framework,runtime,device,code}
    twinserve_inference_request_duration_seconds{model,version,framework,runtime,device}
    twinserve_inference_queue_duration_seconds{...}      Triton's split: queue, compute, total
    twinserve_inference_compute_duration_seconds{...}
    twinserve_inference_batch_size{...}                  rows per framework call
    twinserve_inference_requests_in_flight{model,framework}
    twinserve_model_state{model,version,framework,state} 1 for the state it is in
    twinserve_model_load_duration_seconds{model,version,framework}
    twinserve_training_jobs{framework,state}
    twinserve_training_last_loss{model,framework}        and ..._last_val_loss
    twinserve_device_memory_*_bytes{device}              when the backend reports a GPU
    twinserve_grpc_server_handled_total{method,code}     every call, any service
    twinserve_grpc_server_handling_seconds{method}
    twinserve_grpc_server_in_flight{method}
    process_*, python_gc_*, python_info                  prometheus_client's own collectors

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
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serving.jobs import JobManager
    from serving.manager import ModelManager

__all__ = [
    "InferenceMetrics",
    "JobCollector",
    "MetricsServer",
    "ModelCollector",
    "RpcMetrics",
    "new_registry",
]

logger = logging.getLogger(__name__)

# Seconds: 100 us .. 30 s (a framework call on a tiny model takes ~50 us, a CNN batch on a
# CPU tens of milliseconds, a cold GPU call seconds).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_VERSION_LABELS = ("model", "version", "framework", "runtime", "device")


def new_registry() -> CollectorRegistry:
    """A registry with the process (memory, CPU, open files), platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class RpcMetrics:
    """Every call a server handles, by method and status code (the error interceptor records
    them: it is where exceptions become statuses)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "twinserve_grpc_server_handled",
            "Calls completed, by method and gRPC status code.",
            ("method", "code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "twinserve_grpc_server_handling_seconds",
            "Time from a call's arrival to its status (streams: their whole life).",
            ("method",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "twinserve_grpc_server_in_flight",
            "Calls being handled now.",
            ("method",),
            registry=registry,
        )
        self._children: dict[tuple[str, str], Counter] = {}

    def started(self, method: str) -> None:
        self.in_flight.labels(method).inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.labels(method).dec()
        key = (method, code)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children.setdefault(key, self.handled.labels(method, code))
        counter.inc()
        self.seconds.labels(method).observe(seconds)


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


class JobCollector(Collector):
    """Training jobs by state and each model's last reported loss, at scrape time."""

    STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")

    def __init__(self, jobs: JobManager, framework: str) -> None:
        self.jobs = jobs
        self.framework = framework

    def collect(self) -> Iterable[Metric]:
        by_state = GaugeMetricFamily(
            "twinserve_training_jobs",
            "Training jobs this process knows of (finished ones are kept a while), by state.",
            labels=("framework", "state"),
        )
        loss = GaugeMetricFamily(
            "twinserve_training_last_loss",
            "The training loss of the last epoch reported for each model (its newest job).",
            labels=("model", "framework"),
        )
        val_loss = GaugeMetricFamily(
            "twinserve_training_last_val_loss",
            "The validation loss of the last epoch reported for each model (its newest job).",
            labels=("model", "framework"),
        )
        counts = dict.fromkeys(self.STATES, 0)
        newest: dict[str, tuple[float, float, float | None]] = {}
        for job in list(self.jobs.list()):
            counts[str(job.state)] = counts.get(str(job.state), 0) + 1
            history = list(job.history)
            model = job.plan.model_name
            if history and (model not in newest or newest[model][0] <= job.created):
                newest[model] = (job.created, history[-1].train_loss, history[-1].val_loss)
        for state_name, count in counts.items():
            by_state.add_metric((self.framework, state_name), count)
        for model, (_, train, val) in sorted(newest.items()):
            loss.add_metric((model, self.framework), train)
            if val is not None:
                val_loss.add_metric((model, self.framework), val)
        return [by_state, loss, val_loss]


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


class MetricsServer:
    """The registry served over HTTP (`/metrics`) from a thread of its own."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
