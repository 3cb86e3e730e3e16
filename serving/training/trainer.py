"""Trains one model version into the repository: train, evaluate on held-out data, write the
metadata, commit atomically. Used by training jobs and by seeding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from serving.backend import Backend, Model, TrainSpec, architectures
from serving.backend.architectures import signature_for
from serving.engine.layout import PLATFORMS
from serving.engine.repository import ModelRepository, VersionMeta
from serving.engine.runtimes import export_runtimes
from serving.errors import ModelNotFound, RepositoryError, SignatureChanged
from serving.types import Signature, TensorSpec

__all__ = [
    "check_signature",
    "check_trainable",
    "evaluate",
    "served_signature",
    "train_version",
]


def check_trainable(repository: ModelRepository, model: str) -> None:
    """Refuses (RepositoryError) training into a model that holds a user's model files
    (Triton's layout): its versions would mix files we wrote with files we did not, and
    another service may be the one serving it."""
    try:
        config = repository.read_config(model)
        files = (*(p.default_file for p in PLATFORMS.values()), config.model_filename)
        theirs = sorted(set(repository.versions(model, files)) - set(repository.versions(model)))
    except ModelNotFound:
        return
    if theirs:
        listed = ", ".join(str(v) for v in theirs)
        raise RepositoryError(
            f"model '{model}' holds a user's model files (version {listed}, Triton's layout), "
            "which twinserve serves but does not train: train under another model name"
        )


def served_signature(repository: ModelRepository, model: str) -> Signature | None:
    """The signature of the newest readable version of `model` (the one a request without a
    version gets), or None for a model with none."""
    try:
        versions = repository.versions(model)
    except ModelNotFound:
        return None
    for version in reversed(versions):
        try:
            return repository.read_meta(model, version).signature
        except RepositoryError:
            continue  # unreadable: not served either
    return None


def _describe(signature: Signature) -> str:
    def specs(tensors: tuple[TensorSpec, ...]) -> str:
        return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)

    return f"inputs ({specs(signature.inputs)}) -> outputs ({specs(signature.outputs)})"


def check_signature(model: str, served: Signature | None, new: Signature, *, replace: bool) -> None:
    """Refuses (SignatureChanged) a new version whose inputs or outputs differ from the
    served one's: every client of the model would start failing the moment it is served.
    `replace` (the request's `replace_signature`) says that is what the client wants."""
    if served is None or replace or served == new:
        return
    raise SignatureChanged(
        f"model '{model}' serves {_describe(served)}; this training would serve "
        f"{_describe(new)}, and its current clients would fail. Train under another model "
        "name, or set replace_signature in the TrainRequest to replace the signature"
    )


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
    replace_signature: bool = False,
) -> tuple[int, dict[str, float]]:
    """Trains `spec` and stores it as the next version of `model`. Returns the version and
    its metrics: the backend's (the last epoch's EPOCH_METRICS and train_seconds), held-out
    test metrics when `test` is given, and for `linear` the end-to-end weight and bias.
    A version whose signature differs from the served one's is refused (SignatureChanged)
    unless `replace_signature`. Any exception (a cancelled job, a failed training, that
    refusal) leaves no version."""
    expected = signature_for(
        architectures.get(spec.architecture),
        spec.x,
        spec.input_name,
        spec.output_name,
        spec.num_classes,
    )
    # Before training too: a job queued behind one that changed the signature learns it now
    # rather than after its whole run.
    check_signature(model, served_signature(repository, model), expected, replace=replace_signature)
    with repository.new_version(model) as staged:
        staging = staged.path
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
        # Checked again just before the commit: a version committed since the job started
        # (another job, a copy into the repository) may have changed what is served.
        check_signature(
            model,
            served_signature(repository, model),
            result.signature,
            replace=replace_signature,
        )
    # The number is picked at commit: another writer may have taken the next one meanwhile.
    return staged.version, metrics
