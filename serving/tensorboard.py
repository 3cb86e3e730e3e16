"""TensorBoard scalars for training runs, written by the core so both frameworks log the same
tags: `tensorboard --logdir <dir>` shows them side by side (runs are <model>/<framework>/<job>)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tensorboardX import SummaryWriter

__all__ = ["TAGS", "RunLog"]

# Epoch metric -> tag. `{metric}` is "rmse" or "accuracy".
TAGS = {
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "val_metric": "{metric}/validation",
    "samples_per_second": "throughput/samples_per_second",
}


class RunLog:
    def __init__(self, directory: Path, metric: str) -> None:
        self.directory = directory
        self.metric = metric
        self._writer = SummaryWriter(logdir=str(directory), flush_secs=5)

    def epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            tag = TAGS.get(key)
            if tag is not None:
                self._writer.add_scalar(tag.format(metric=self.metric), value, epoch)

    def close(self) -> None:
        self._writer.close()
