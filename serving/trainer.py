"""Trains one model version into the repository: train, evaluate on held-out data, write the
metadata, commit atomically. Used by training jobs and by seeding."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from serving.backend import Backend, TrainSpec
from serving.repository import ModelRepository, VersionMeta

__all__ = ["evaluate", "train_version"]


def evaluate(predictions: np.ndarray, targets: np.ndarray, task: str) -> dict[str, float]:
    """Held-out metrics: RMSE for regression, accuracy for classification."""
    if task == "classification":
        accuracy = float(np.mean(np.argmax(predictions, axis=1) == targets.reshape(-1)))
        return {"test_accuracy": accuracy}
    error = predictions.reshape(-1).astype(np.float64) - targets.reshape(-1)
    return {"test_rmse": float(np.sqrt(np.mean(error**2)))}


def train_version(
    repository: ModelRepository,
    backend: Backend,
    model: str,
    spec: TrainSpec,
    dataset: str,
    *,
    hyperparameters: Mapping[str, object] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[int, dict[str, float]]:
    """Trains `spec` and stores it as the next version of `model`. Returns the version and
    its metrics. Any exception (a cancelled job, a failed training) leaves no version."""
    with repository.new_version(model) as (version, staging):
        result = backend.train(spec, staging)
        metrics = dict(result.metrics)
        if test is not None and len(test[0]):
            trained = backend.load(staging, spec.architecture)
            try:
                outputs = trained.predict({spec.input_name: test[0]})
            finally:
                trained.close()
            metrics.update(evaluate(outputs[spec.output_name], test[1], spec.task))
        meta = VersionMeta(
            framework=backend.framework,
            platform=backend.platform,
            architecture=spec.architecture,
            signature=result.signature,
            metrics=metrics,
            hyperparameters=dict(hyperparameters or {}),
            dataset=dataset,
        )
        repository.write_meta(staging, meta)
    return version, metrics
