"""Prometheus metrics of training jobs, in the server's registry:

twinserve_training_jobs{framework,state}
twinserve_training_last_loss{model,framework}        and ..._last_val_loss
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serving.training.jobs import JobManager

__all__ = ["JobCollector"]


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
