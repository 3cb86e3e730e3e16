"""Runtimes of a stored version: making exports (each checked against the native model on
held-out inputs) and loading whichever runtime a request asks for."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from serving.backend import Backend, Model
from serving.engine.onnx_model import ONNX_FILE, OnnxModel
from serving.engine.repository import RuntimeRecord, RuntimeStatus, VersionMeta
from serving.errors import ServingError, public_reason
from serving.types import Signature

__all__ = ["DEFAULT_TOLERANCE", "export_runtimes", "load_runtime"]

logger = logging.getLogger(__name__)

# An export may differ from the native model by this much, relative to the largest output
# magnitude (at least 1): float32 reorderings stay far below it, a broken export far above.
DEFAULT_TOLERANCE = 1e-3


def load_runtime(
    backend: Backend,
    version_dir: Path,
    meta: VersionMeta,
    runtime: str,
    *,
    threads: int = 0,
    onnx_device: str | None = None,
) -> Model:
    """`runtime` of the stored version, on the backend's device (ONNX: `onnx_device` if
    given)."""
    if runtime == "onnx":
        return OnnxModel(
            version_dir / ONNX_FILE,
            [spec.name for spec in meta.signature.inputs],
            [spec.name for spec in meta.signature.outputs],
            threads=threads,
            device=onnx_device or backend.device,  # where the backend's own runtimes run
        )
    return backend.load(version_dir, meta.architecture, runtime)


def _predict(model: Model, signature: Signature, probe: np.ndarray) -> np.ndarray:
    inputs = {signature.inputs[0].name: probe}
    return np.asarray(model.predict(inputs)[signature.outputs[0].name], dtype=np.float64)


def export_runtimes(
    backend: Backend,
    version_dir: Path,
    meta: VersionMeta,
    probe: np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, RuntimeRecord]:
    """Exports every non-native runtime of `backend` into `version_dir` and checks each on
    `probe` inputs. An export that fails or disagrees is removed and recorded as refused."""
    records = {"native": RuntimeRecord(backend.runtimes["native"])}
    native = backend.load(version_dir, meta.architecture)
    try:
        reference = _predict(native, meta.signature, probe)
    finally:
        native.close()
    limit = tolerance * max(1.0, float(np.max(np.abs(reference))))
    for runtime, platform in backend.runtimes.items():
        if runtime == "native":
            continue
        before = set(version_dir.iterdir())
        diff: float | None = None
        try:
            backend.export(version_dir, meta.architecture, runtime)
            # An ONNX file is checked on the CPU, which every ONNX Runtime has: a service on
            # a GPU whose ONNX Runtime lacks CUDA would otherwise refuse (and delete) an
            # export that is good, for the CPU replicas sharing the repository too. Where
            # it is served, its device is checked again at load.
            exported = load_runtime(backend, version_dir, meta, runtime, onnx_device="cpu")
            try:
                answer = _predict(exported, meta.signature, probe)
            finally:
                exported.close()
            if answer.shape != reference.shape:
                raise ServingError(
                    f"answers shape {list(answer.shape)}, native {list(reference.shape)}"
                )
            diff = float(np.max(np.abs(answer - reference))) if reference.size else 0.0
            if not diff <= limit:  # also refuses NaN
                raise ServingError(
                    f"differs from the native model by {diff:.3g} (tolerance {limit:.3g})"
                )
            records[runtime] = RuntimeRecord(platform, RuntimeStatus.OK, limit, diff)
        except Exception as exc:
            # The record is shown to clients (a request for this runtime says why it is
            # missing): a short reason there, the exception with its traceback in the log.
            reason = public_reason(exc, "the export failed")
            logger.warning(
                "refusing the %s export of %s: %s",
                runtime,
                version_dir,
                reason,
                exc_info=not isinstance(exc, ServingError),  # ours say it all
            )
            records[runtime] = RuntimeRecord(platform, RuntimeStatus.REFUSED, limit, diff, reason)
            for path in set(version_dir.iterdir()) - before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return records
