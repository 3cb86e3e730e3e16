"""The metrics every server has, service or gateway: its registry, the gRPC call metrics and
the `/metrics` endpoint. Model, device and training metrics are added to the same registry by
the engine (`serving.engine.metrics`) and training (`serving.training.metrics`).

One registry per server rather than the global one: a test process runs many servers, and
each must report only its own models and calls. The metrics are still declared once.

    twinserve_grpc_server_handled_total{method,code}     every call, any service
    twinserve_grpc_server_handling_seconds{method}
    twinserve_grpc_server_in_flight{method}
    process_*, python_gc_*, python_info                  prometheus_client's own collectors
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from serving.rpc.calls import Call, CallHook

__all__ = ["LATENCY_BUCKETS", "MetricsServer", "RpcMetrics", "new_registry"]

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


def new_registry() -> CollectorRegistry:
    """A registry with the process (memory, CPU, open files), platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class RpcMetrics:
    """Every call a server handles, by method and status code: a concern of the server's
    interceptor (`serving.rpc.calls`), with one hook per method holding its label children."""

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
        self._methods: dict[str, _MethodMetrics] = {}

    def for_method(self, method: str, *, unary: bool) -> CallHook:
        found = self._methods.get(method)
        if found is None:
            found = self._methods.setdefault(method, _MethodMetrics(self, method))
        return found


class _MethodMetrics:
    """The children of one method, looked up once (a `labels()` lookup takes a lock)."""

    __slots__ = ("_codes", "_handled", "_method", "in_flight", "seconds")

    def __init__(self, metrics: RpcMetrics, method: str) -> None:
        self.in_flight = metrics.in_flight.labels(method)
        self.seconds = metrics.seconds.labels(method)
        self._handled = metrics.handled
        self._method = method
        self._codes: dict[grpc.StatusCode, Counter] = {}

    def started(self, call: Call) -> None:
        self.in_flight.inc()

    def finished(self, call: Call) -> None:
        self.in_flight.dec()
        counter = self._codes.get(call.code)
        if counter is None:
            child = self._handled.labels(self._method, call.code.name)
            counter = self._codes.setdefault(call.code, child)
        counter.inc()
        self.seconds.observe(call.seconds)


class MetricsServer:
    """The registry served over HTTP (`/metrics`) from a thread of its own."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
