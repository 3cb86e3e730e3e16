"""Shadow traffic: a served request mirrored to a second framework in the background, and
what the two answers' comparison has measured, per model.

A mirror never touches the client's call: it starts after the served answer is back, runs
as its own task under its own deadline, and at most `limit` run at once; beyond that a
request is not mirrored and the drop is counted. A request the serving framework fails is
not mirrored.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.difference import disagreement
from gateway.upstream import Upstream
from serving.pb import inference_pb2 as pb

__all__ = ["DIFF_BOUNDS", "LATENCY_BOUNDS_MS", "Histogram", "Shadow", "ShadowStats"]

logger = logging.getLogger(__name__)

LATENCY_BOUNDS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
DIFF_BOUNDS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0)


class Histogram:
    """Observations counted per bucket (not cumulative): counts[i] holds those at most
    upper_bounds[i] and above the bound before it; the last bound is +inf."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.upper_bounds = (*bounds, math.inf)
        self.counts = [0] * len(self.upper_bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.upper_bounds, value)] += 1
        self.count += 1
        self.sum += value


@dataclass
class ShadowStats:
    """One model's shadow traffic. Plain numbers, read by GetShadowStats and by tests."""

    model: str
    serve: str = ""
    shadow: str = ""
    served: int = 0
    mirrored: int = 0
    dropped: int = 0
    failed: int = 0
    in_flight: int = 0
    compared: int = 0
    incomparable: int = 0
    last_max_abs_diff: float = 0.0
    worst_max_abs_diff: float = 0.0
    max_abs_diff: Histogram = field(default_factory=lambda: Histogram(DIFF_BOUNDS))
    last_serve_latency_ms: float = 0.0
    last_shadow_latency_ms: float = 0.0
    serve_latency_ms: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_MS))
    shadow_latency_ms: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_MS))

    def record_served(self, serve: str, shadow: str, latency_ms: float) -> None:
        self.serve, self.shadow = serve, shadow
        self.served += 1
        self.last_serve_latency_ms = latency_ms
        self.serve_latency_ms.observe(latency_ms)

    def record_shadow(self, latency_ms: float, gap: float | None) -> None:
        self.last_shadow_latency_ms = latency_ms
        self.shadow_latency_ms.observe(latency_ms)
        if gap is None:
            self.incomparable += 1
            return
        self.compared += 1
        self.last_max_abs_diff = gap
        self.worst_max_abs_diff = max(self.worst_max_abs_diff, gap)
        self.max_abs_diff.observe(gap)


class Shadow:
    """Mirrors requests to their shadow framework, at most `limit` at a time."""

    def __init__(self, upstreams: Mapping[str, Upstream], *, limit: int, timeout: float) -> None:
        self.upstreams = dict(upstreams)
        self.limit = limit
        self.timeout = timeout
        self._stats: dict[str, ShadowStats] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stats(self, model: str) -> ShadowStats:
        if model not in self._stats:
            self._stats[model] = ShadowStats(model)
        return self._stats[model]

    def peek(self, model: str) -> ShadowStats:
        """The model's statistics (all zero if it has had no shadow traffic), unrecorded."""
        return self._stats.get(model) or ShadowStats(model)

    def all_stats(self) -> list[ShadowStats]:
        return [self._stats[model] for model in sorted(self._stats)]

    def mirror(
        self,
        request: pb.ModelInferRequest,
        served: pb.ModelInferResponse,
        serve: str,
        shadow: str,
        latency_ms: float,
    ) -> None:
        """Records the served call and mirrors `request` to `shadow` unless `limit` mirrors
        are already in flight. Returns at once."""
        stats = self.stats(request.model_name)
        stats.record_served(serve, shadow, latency_ms)
        if len(self._tasks) >= self.limit:
            stats.dropped += 1
            return
        stats.mirrored += 1
        stats.in_flight += 1
        task = asyncio.create_task(self._run(request, served, self.upstreams[shadow], stats))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        request: pb.ModelInferRequest,
        served: pb.ModelInferResponse,
        upstream: Upstream,
        stats: ShadowStats,
    ) -> None:
        try:
            started = time.perf_counter()
            try:
                answer = await upstream.call(upstream.stub.ModelInfer, request, self.timeout)
            except Exception as exc:
                stats.failed += 1
                logger.debug("shadow %s of %s failed: %s", upstream.framework, stats.model, exc)
                return
            latency_ms = (time.perf_counter() - started) * 1000.0
            try:
                # Decoding large outputs takes time: off the event loop.
                gap = await asyncio.to_thread(disagreement, served, answer)
            except Exception:
                logger.warning("shadow answer of %s not comparable", stats.model, exc_info=True)
                gap = None
            stats.record_shadow(latency_ms, gap)
        finally:
            stats.in_flight -= 1

    async def close(self) -> None:
        """Cancels the mirrors in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
