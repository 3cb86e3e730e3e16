"""What a run measured, merged over its client processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.histogram import Histogram, new_histogram
from loadtest.worker import ShareResult

__all__ = ["PERCENTILES", "LoadResult"]

# The figures every report shows: name -> percentile.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
# A client process busier than this (in cores) may be what limits the run: its Python side
# is bound by one core (the GIL), whatever gRPC's own threads add.
_SATURATED_CPU = 0.85
# Open loop: sends this late (p99, ms) mean the client cannot keep the schedule.
_SATURATED_LAG_MS = 5.0


@dataclass
class LoadResult:
    """Latencies are in microseconds in the histograms; every figure below is in ms."""

    mode: str  # "closed" or "open"
    concurrency: int  # closed loop: calls in flight (all processes together)
    rate: float  # open loop: intended calls per second (all processes together)
    latency: Histogram  # correct answers only (loadtest.histogram: HdrHistogram or NumPy's)
    send_lag: Histogram
    ok: int = 0
    wrong_answers: int = 0
    wrong_example: str | None = None
    errors: dict[str, int] = field(default_factory=dict)  # by gRPC status code name
    error_examples: dict[str, str] = field(default_factory=dict)
    window_s: float = 0.0
    client_cpu: list[float] = field(default_factory=list)  # cores used, per client process

    @classmethod
    def merge(
        cls, mode: str, concurrency: int, rate: float, shares: Sequence[ShareResult]
    ) -> LoadResult:
        latency, lag = new_histogram(), new_histogram()
        errors: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for share in shares:
            latency.decode_and_add(share.latency)
            lag.decode_and_add(share.send_lag)
            errors.update(share.errors)
            for code, message in share.error_examples.items():
                examples.setdefault(code, message)
        wrong_examples = [s.wrong_example for s in shares if s.wrong_example]
        return cls(
            mode=mode,
            concurrency=concurrency,
            rate=rate,
            latency=latency,
            send_lag=lag,
            ok=sum(s.ok for s in shares),
            wrong_answers=sum(s.wrong for s in shares),
            wrong_example=wrong_examples[0] if wrong_examples else None,
            errors=dict(errors),
            error_examples=examples,
            window_s=max((s.window_s for s in shares), default=0.0),
            client_cpu=[s.cpu_s / s.wall_s if s.wall_s > 0 else 0.0 for s in shares],
        )

    @property
    def requests(self) -> int:
        """Measured calls: correct, wrong and failed."""
        return self.ok + self.wrong_answers + sum(self.errors.values())

    @property
    def failures(self) -> int:
        return self.wrong_answers + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Correct answers per second."""
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    def percentile_ms(self, percentile: float) -> float:
        return float(self.latency.get_value_at_percentile(percentile)) / 1000

    def latency_ms(self) -> dict[str, float]:
        """p50, p90, p99, p99.9, max and mean of the correct answers' latencies."""
        if self.latency.get_total_count() == 0:
            return {name: float("nan") for name in [*PERCENTILES, "max", "mean"]}
        figures = {name: self.percentile_ms(p) for name, p in PERCENTILES.items()}
        figures["max"] = float(self.latency.get_max_value()) / 1000
        figures["mean"] = float(self.latency.get_mean_value()) / 1000
        return figures

    @property
    def client_saturated(self) -> str | None:
        """Why the client itself may have limited the run, or None."""
        busy = [(i, cpu) for i, cpu in enumerate(self.client_cpu) if cpu > _SATURATED_CPU]
        if busy:
            i, cpu = max(busy, key=lambda item: item[1])
            return f"client process {i} used {cpu:.2f} of a core"
        if self.mode == "open" and self.send_lag.get_total_count():
            lag = float(self.send_lag.get_value_at_percentile(99)) / 1000
            if lag > _SATURATED_LAG_MS:
                return f"sends left up to {lag:.1f} ms behind schedule (p99)"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "ok": self.ok,
            "throughput_per_s": self.throughput,
            "latency_ms": self.latency_ms(),
            "errors": self.errors,
            "error_examples": self.error_examples,
            "wrong_answers": self.wrong_answers,
            "wrong_example": self.wrong_example,
            "window_s": self.window_s,
            "client_processes": len(self.client_cpu),
            "client_cpu_cores": self.client_cpu,
            "client_saturated": self.client_saturated,
            "send_lag_p99_ms": float(self.send_lag.get_value_at_percentile(99)) / 1000,
            # The whole distribution, for re-analysis: HdrHistogram's compressed base64 form,
            # or the NumPy fallback's samples (loadtest.histogram.decode reads both).
            "histogram_us": self.latency.encode().decode("ascii"),
        }
