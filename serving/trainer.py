"""Trains one model version into the repository: train, evaluate on held-out data, write the
metadata, commit atomically. Used by training jobs and by seeding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from serving.backend import Backend, Model, TrainSpec
from serving.repository import ModelRepository, VersionMeta
from serving.runtimes import export_runtimes

__all__ = ["evaluate", "train_version"]


def evaluate(predictions: np.ndarray, targets: np.ndarray, task: str) -> dict[str, float]:
    """Held-out metrics: RMSE for regression, accuracy for classification."""
    if task == "classification":
        accuracy = float(np.mean(np.argmax(predictions, axis=1) == targets.reshape(-1)))
        return {"test_accuracy": accuracy}
    error = predictions.reshape(-1).astype(np.float64) - targets.reshape(-1)
    return {"test_rmse": float(np.sqrt(np.mean(error**2)))}


def _line(model: Model, spec: TrainSpec) -> dict[str, float]:
    """End-to-end slope and intercept of a one-feature model in the caller's units, whatever
    scaling sits inside (the house-price model should learn weight 0.2). Measured across the
    widest span of the data, from the stored model, the same way for both frameworks."""
    low, high = float(spec.x.min()), float(spec.x.max())
    high = high if high > low else low + 1.0
    points = np.array([[low], [high], [0.0]], dtype=np.float32)
    at_low, at_high, at_zero = (
        model.predict({spec.input_name: points})[spec.output_name].astype(np.float64).reshape(-1)
    )
    return {"weight": (at_high - at_low) / (high - low), "bias": float(at_zero)}


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
    its metrics: the backend's (the last epoch's EPOCH_METRICS and train_seconds), held-out
    test metrics when `test` is given, and for `linear` the end-to-end weight and bias.
    Any exception (a cancelled job, a failed training) leaves no version."""
    with repository.new_version(model) as (version, staging):
        result = backend.train(spec, staging)
        metrics = dict(result.metrics)
        trained = backend.load(staging, spec.architecture)
        try:
            if test is not None and len(test[0]):
                outputs = trained.predict({spec.input_name: test[0]})
                metrics.update(evaluate(outputs[spec.output_name], test[1], spec.task))
            if spec.architecture == "linear":
                metrics.update(_line(trained, spec))
        finally:
            trained.close()
        meta = VersionMeta(
            framework=backend.framework,
            platform=backend.runtimes["native"],
            architecture=spec.architecture,
            signature=result.signature,
            metrics=metrics,
            hyperparameters=dict(hyperparameters or {}),
            dataset=dataset,
        )
        # Held-out inputs check the exports: the test split, else validation, else training.
        probe = next(
            x for x in (test[0] if test else None, spec.x_val, spec.x) if x is not None and len(x)
        )[:256]
        meta = replace(meta, runtimes=export_runtimes(backend, staging, meta, probe))
        repository.write_meta(staging, meta)
    return version, metrics
