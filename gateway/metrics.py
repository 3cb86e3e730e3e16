"""The gateway's own Prometheus metrics, read at scrape time from the objects that keep them
(the upstreams' counters, each replica's health, the shadow statistics). The gRPC metrics
every server has (`twinserve_grpc_server_*`) come from `serving.engine.metrics.RpcMetrics`.

    twinserve_gateway_replica_healthy{framework,replica}      1 healthy, 0 not
    twinserve_gateway_replica_in_flight{framework,replica}
    twinserve_gateway_upstream_requests_total{framework}      calls asked of a service
    twinserve_gateway_upstream_attempts_total{framework}      sent to replicas (retries too)
    twinserve_gateway_upstream_retries_total{framework}
    twinserve_gateway_upstream_retries_denied_total{framework} refused by the retry budget
    twinserve_gateway_upstream_rejected_total{framework}      every replica at its limit
    twinserve_gateway_shadow_{served,mirrored,dropped,failed,compared}_total{model}
    twinserve_gateway_shadow_in_flight{model}
    twinserve_gateway_shadow_disagreement{model}              histogram: max |serve - shadow|
    twinserve_gateway_shadow_{serve,shadow}_latency_seconds{model}   histograms
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.shadow import Histogram, Shadow
from gateway.upstream import Upstream

__all__ = ["GatewayCollector"]

_UPSTREAM_COUNTERS = (
    ("requests", "Calls asked of the framework service."),
    ("attempts", "Calls sent to its replicas, retries and fan-outs included."),
    ("retries", "Calls tried again on another replica after UNAVAILABLE."),
    ("retries_denied", "Retries the retry budget refused."),
    ("rejected", "Calls refused at once: every healthy replica at its in-flight limit."),
)
_SHADOW_COUNTERS = (
    ("served", "Requests answered by the serving framework under a shadow policy."),
    ("mirrored", "Requests mirrored to the shadow framework."),
    ("dropped", "Requests not mirrored: too many mirrors in flight."),
    ("failed", "Mirrors the shadow framework failed."),
    ("compared", "Mirrors whose answers were compared with the served ones."),
)


def _buckets(histogram: Histogram, scale: float) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus' cumulative (le, count) pairs."""
    counts = list(histogram.counts)
    cumulative, total = [], 0
    for bound, count in zip(histogram.upper_bounds, counts, strict=True):
        total += count
        le = "+Inf" if math.isinf(bound) else repr(bound * scale)
        cumulative.append((le, float(total)))
    return cumulative


class GatewayCollector(Collector):
    def __init__(self, upstreams: Sequence[Upstream], shadow: Shadow | None) -> None:
        self.upstreams = list(upstreams)
        self.shadow = shadow

    def collect(self) -> Iterable[Metric]:
        yield from self._replicas()
        yield from self._upstreams()
        if self.shadow is not None:
            yield from self._shadow(self.shadow)

    def _replicas(self) -> Iterable[Metric]:
        healthy = GaugeMetricFamily(
            "twinserve_gateway_replica_healthy",
            "1 while the replica's last grpc.health.v1 check said SERVING.",
            labels=("framework", "replica"),
        )
        in_flight = GaugeMetricFamily(
            "twinserve_gateway_replica_in_flight",
            "Unary calls the gateway has in flight to the replica.",
            labels=("framework", "replica"),
        )
        for upstream in self.upstreams:
            for replica in list(upstream.replicas):
                labels = (upstream.framework, replica.address)
                healthy.add_metric(labels, float(replica.healthy))
                in_flight.add_metric(labels, replica.inflight)
        return [healthy, in_flight]

    def _upstreams(self) -> Iterable[Metric]:
        for name, doc in _UPSTREAM_COUNTERS:
            family = CounterMetricFamily(
                f"twinserve_gateway_upstream_{name}", doc, labels=("framework",)
            )
            for upstream in self.upstreams:
                family.add_metric((upstream.framework,), getattr(upstream, name))
            yield family

    def _shadow(self, shadow: Shadow) -> Iterable[Metric]:
        stats = list(shadow.all_stats())
        for name, doc in _SHADOW_COUNTERS:
            family = CounterMetricFamily(f"twinserve_gateway_shadow_{name}", doc, labels=("model",))
            for entry in stats:
                family.add_metric((entry.model,), getattr(entry, name))
            yield family
        in_flight = GaugeMetricFamily(
            "twinserve_gateway_shadow_in_flight", "Mirrors running now.", labels=("model",)
        )
        disagreement = HistogramMetricFamily(
            "twinserve_gateway_shadow_disagreement",
            "Largest absolute difference between the served and the shadow answer's outputs.",
            labels=("model",),
        )
        latency = {
            side: HistogramMetricFamily(
                f"twinserve_gateway_shadow_{side}_latency_seconds",
                f"Latency of the {side} framework's answer under a shadow policy.",
                labels=("model",),
            )
            for side in ("serve", "shadow")
        }
        for entry in stats:
            labels = (entry.model,)
            in_flight.add_metric(labels, entry.in_flight)
            diff = entry.max_abs_diff
            disagreement.add_metric(labels, _buckets(diff, 1.0), diff.sum)
            for side, histogram in (
                ("serve", entry.serve_latency_ms),
                ("shadow", entry.shadow_latency_ms),
            ):
                latency[side].add_metric(labels, _buckets(histogram, 0.001), histogram.sum / 1000.0)
        yield in_flight
        yield disagreement
        yield from latency.values()
