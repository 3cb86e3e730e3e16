"""The ONNX Runtime backend: a version's native runtime is its ONNX export, run by ONNX Runtime.

It serves a repository another framework's service trained into (`models/pytorch`, say): every
version there holds `model.json` (the signature) and, when its ONNX export passed the parity
check at training time, `model.onnx`. The version's own native files (a SavedModel, a state
dict) are never read, so this service needs no TensorFlow or PyTorch. Training and exporting are
refused: there is nothing here to train with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from serving.backend import Model, ModelFile, TrainResult, TrainSpec
from serving.engine.onnx_model import ONNX_FILE, OnnxModel, onnx_providers
from serving.engine.repository import META_FILE, RuntimeStatus, VersionMeta
from serving.errors import InvalidInput, RepositoryError, Unsupported
from serving.types import Signature

__all__ = ["FRAMEWORK", "OnnxBackend"]

logger = logging.getLogger(__name__)

FRAMEWORK = "onnx"
# The export this backend runs, under the name the exporting framework's metadata gives it.
_EXPORT = "onnx"


class OnnxBackend:
    framework = FRAMEWORK
    triton_platform = "onnxruntime_onnx"
    triton_backend = "onnxruntime"
    runtimes: Mapping[str, str] = MappingProxyType({"native": "onnxruntime_onnx"})

    def __init__(self, *, device: str = "cpu", threads: int = 0) -> None:
        if threads < 0:
            raise InvalidInput(
                f"threads must be >= 0 (0 keeps ONNX Runtime's default), not {threads}"
            )
        onnx_providers(device)  # a device this ONNX Runtime cannot use stops the start
        self.device = device
        self.threads = threads

    def device_stats(self) -> dict[str, float]:
        """Nothing: ONNX Runtime's Python API reports no memory use per device."""
        return {}

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        """The version's `model.onnx` in an ONNX Runtime session, its tensors named by the
        version's signature."""
        if runtime != "native":
            raise InvalidInput(f"the {FRAMEWORK} backend loads only 'native', not '{runtime}'")
        meta = _read_meta(version_dir)
        export = meta.runtimes.get(_EXPORT)
        if export is None or export.status is not RuntimeStatus.OK:
            why = "was never made" if export is None else f"was refused: {export.reason}"
            # The message reaches clients (the model's reason): no paths in it.
            raise RepositoryError(f"no usable ONNX export (its {meta.framework} export {why})")
        path = version_dir / ONNX_FILE
        if not path.is_file():
            logger.warning("%s records an ONNX export but has no %s", version_dir, ONNX_FILE)
            raise RepositoryError(f"no usable ONNX export ({ONNX_FILE} is missing)")
        model = OnnxModel(
            path,
            [spec.name for spec in meta.signature.inputs],
            [spec.name for spec in meta.signature.outputs],
            threads=self.threads,
            device=self.device,
        )
        logger.debug("loaded %s (%s export) on %s", version_dir, meta.framework, self.device)
        return model

    def describe(self, path: Path) -> Signature | None:
        raise Unsupported(_CORE_RUNS_ONNX)  # its platform is ONNX's: the core reads those

    def load_file(self, model: ModelFile) -> Model:
        raise Unsupported(_CORE_RUNS_ONNX)

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        raise Unsupported(_NO_TRAINING)

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        raise Unsupported(f"the {FRAMEWORK} backend exports nothing: it serves ONNX exports")


_CORE_RUNS_ONNX = "the core runs users' ONNX files itself (serving.engine.user_models)"
_NO_TRAINING = (
    f"the {FRAMEWORK} service does not train: it serves the ONNX exports of models another "
    "framework's service trained; train there (through the gateway: its framework name)"
)


def _read_meta(version_dir: Path) -> VersionMeta:
    path = version_dir / META_FILE
    try:
        return VersionMeta.from_json(path.read_text())
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # The parser's words go to the log (the chained cause), not to clients.
        raise RepositoryError(f"{META_FILE} is not valid version metadata") from exc
