"""Runtimes of a stored version: making exports (each checked against the native model on
held-out inputs) and loading whichever runtime a request asks for."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from serving.backend import Backend, Model
from serving.engine.onnx_model import ONNX_FILE, OnnxModel
from serving.engine.repository import VersionMeta
from serving.errors import ServingError
from serving.types import Signature

__all__ = ["DEFAULT_TOLERANCE", "export_runtimes", "load_runtime"]

logger = logging.getLogger(__name__)

# An export may differ from the native model by this much, relative to the largest output
# magnitude (at least 1): float32 reorderings stay far below it, a broken export far above.
DEFAULT_TOLERANCE = 1e-3


def load_runtime(
    backend: Backend, version_dir: Path, meta: VersionMeta, runtime: str, *, threads: int = 0
) -> Model:
    if runtime == "onnx":
        return OnnxModel(
            version_dir / ONNX_FILE,
            [spec.name for spec in meta.signature.inputs],
            [spec.name for spec in meta.signature.outputs],
            threads=threads,
            device=_device(backend),
        )
    return backend.load(version_dir, meta.architecture, runtime)


def _device(backend: Backend) -> str:
    """The service's device, which ONNX runs on as the backend's own runtimes do. Backends
    that place models expose `device` (a string, or a torch.device whose str is the same
    spelling); the Backend protocol does not declare it yet, so one without is the CPU."""
    return str(getattr(backend, "device", "cpu"))


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
) -> dict[str, dict[str, Any]]:
    """Exports every non-native runtime of `backend` into `version_dir` and checks each on
    `probe` inputs. An export that fails or disagrees is removed and recorded as refused."""
    info: dict[str, dict[str, Any]] = {
        "native": {"status": "ok", "platform": backend.runtimes["native"]}
    }
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
        entry: dict[str, Any] = {"platform": platform, "tolerance": limit}
        try:
            backend.export(version_dir, meta.architecture, runtime)
            exported = load_runtime(backend, version_dir, meta, runtime)
            try:
                answer = _predict(exported, meta.signature, probe)
            finally:
                exported.close()
            if answer.shape != reference.shape:
                raise ServingError(
                    f"answers shape {list(answer.shape)}, native {list(reference.shape)}"
                )
            diff = float(np.max(np.abs(answer - reference))) if reference.size else 0.0
            entry["max_abs_diff"] = diff
            if not diff <= limit:  # also refuses NaN
                raise ServingError(
                    f"differs from the native model by {diff:.3g} (tolerance {limit:.3g})"
                )
            entry["status"] = "ok"
        except Exception as exc:
            reason = (
                exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            )
            logger.warning("refusing the %s export of %s: %s", runtime, version_dir, reason)
            entry |= {"status": "refused", "reason": reason}
            for path in set(version_dir.iterdir()) - before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        info[runtime] = entry
    return info
