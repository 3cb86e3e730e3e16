"""The PyTorch backend: trains the shared architectures and serves them in eager mode, or as
TorchScript; it also exports ONNX, which the core runs (`torch_service.export`). Training
is `torch_service.training`.

A version directory holds `weights.pt` (a bare CPU state_dict) and `torch_config.json` (which
module to build, its constructor arguments and its tensor names). Loading rebuilds the module
from `ARCHITECTURES` and reads the weights with `weights_only=True`, so a model file can never
run code. The served model is the module's `forward`: raw target units for regression,
softmax probabilities for classification (training uses `forward_train`, see `models`).
Exports are traced from that same rebuilt module, on the CPU. A user's own TorchScript
file (Triton's `model.pt`, which runs its own TorchScript code) is `torch_service.torchscript`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from serving.backend import ModelFile, TrainResult, TrainSpec
from serving.backend.architectures import get, signature_for
from serving.engine.onnx_model import ONNX_FILE
from serving.errors import BackendUnavailable, InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature
from torch_service.export import (
    TORCHSCRIPT_FILE,
    export_onnx,
    export_torchscript,
    load_torchscript,
)
from torch_service.models import ARCHITECTURES, TrainableModule
from torch_service.torchscript import TorchScriptModel, load_file
from torch_service.training import fit

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "TorchBackend", "TorchModel"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "torch_config.json"
WEIGHTS_FILE = "weights.pt"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_LOADED = ("native", "torchscript")  # "onnx" too is offered, but the core runs it
_EXPORTED = ("torchscript", "onnx")  # "native" is what training writes


class TorchModel:
    """A loaded version. Safe to share between threads: the module is in eval mode and
    `forward` mutates nothing, and `inference_mode` is thread-local."""

    def __init__(
        self, module: nn.Module, input_name: str, output_name: str, device: torch.device
    ) -> None:
        self._module: nn.Module | None = module
        self._input_name = input_name
        self._output_name = output_name
        self._device = device

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._module  # one read, so a concurrent close() cannot pull it away mid-call
        if module is None:
            raise ModelNotReady("model has been unloaded")
        if self._input_name not in inputs:
            raise InvalidInput(f"missing input '{self._input_name}'")
        array = np.ascontiguousarray(inputs[self._input_name], dtype=np.float32)
        # The codec hands out read-only views of the request bytes (np.frombuffer), which
        # torch.from_numpy warns about; nothing writes to the tensor, but copy to stay quiet.
        if not array.flags.writeable:
            array = array.copy()
        with torch.inference_mode():
            output = module(torch.from_numpy(array).to(self._device))
            return {self._output_name: output.cpu().numpy()}

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


class TorchBackend:
    framework = "pytorch"
    # Triton's names for TorchScript; the eager native runtime answers for them here.
    triton_platform = "pytorch_libtorch"
    triton_backend = "pytorch"
    runtimes: Mapping[str, str] = MappingProxyType(
        {
            "native": "pytorch_eager",
            "torchscript": "pytorch_torchscript",
            "onnx": "onnxruntime_onnx",
        }
    )

    def __init__(self, *, device: str = "cpu", threads: int = 0) -> None:
        if threads < 0:
            raise InvalidInput(f"threads must be >= 0 (0 keeps PyTorch's default), not {threads}")
        if threads > 0:
            # Process-wide: every model in this service shares one intra-op pool.
            torch.set_num_threads(threads)
        self._device = _check_device(device)
        # The contract's spelling ("cpu", "cuda", "cuda:N"): str of a torch.device is the same.
        self.device = str(self._device)

    def device_stats(self) -> dict[str, float]:
        """GPU memory (and utilisation where NVML answers) for the metrics
        (`twinserve_device_*`); nothing on a CPU."""
        device = self._device
        if device.type != "cuda":
            return {}
        stats = {
            "memory_allocated_bytes": float(torch.cuda.memory_allocated(device)),
            "memory_reserved_bytes": float(torch.cuda.memory_reserved(device)),
        }
        with contextlib.suppress(Exception):  # NVML (pynvml) missing: memory only
            stats["utilization_ratio"] = torch.cuda.utilization(device) / 100.0
        return stats

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains on `spec.device` (or this backend's device) and writes CPU weights.

        Uses no process-wide random state, so trainings may run in several threads at once.
        An exception raised by `spec.on_epoch` stops training and propagates unchanged.
        """
        architecture = _architecture(spec.architecture, error=InvalidInput)
        device = _check_device(spec.device) if spec.device else self._device
        kwargs = architecture.kwargs_for(spec.x.shape, spec.num_classes)
        module = architecture(**kwargs)
        started = time.perf_counter()
        metrics = fit(module, spec, device)
        metrics["train_seconds"] = round(time.perf_counter() - started, 3)
        logger.info("trained %s on %s: %s", spec.architecture, device, metrics)
        _save(module.to("cpu"), spec, kwargs, version_dir)
        signature = signature_for(
            get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
        )
        return TrainResult(signature, metrics)

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> TorchModel:
        """Serves the version's weights in eager mode ("native"), or its TorchScript export."""
        if runtime not in _LOADED:
            raise InvalidInput(
                f"TorchBackend loads the 'native' and 'torchscript' runtimes, not '{runtime}'"
                + (" (the core runs ONNX exports itself)" if runtime == "onnx" else "")
            )
        config = _read_config(version_dir)
        if runtime == "native":
            module: nn.Module = _restore(version_dir, architecture, config, self._device)
        else:
            _check_architecture(version_dir, architecture, config)
            module = load_torchscript(version_dir / TORCHSCRIPT_FILE, self._device)
        logger.debug(
            "loaded %s (%s) from %s on %s", architecture, runtime, version_dir, self.device
        )
        return TorchModel(module, config["input_name"], config["output_name"], self._device)

    def describe(self, path: Path) -> Signature | None:
        """None: a TorchScript file declares no signature, so (as in Triton) its
        `config.pbtxt` must declare the inputs and outputs."""
        return None

    def load_file(self, model: ModelFile) -> TorchScriptModel:
        """A user's TorchScript file on this backend's device, its declared inputs and
        outputs mapped onto `forward` as Triton's PyTorch backend maps them
        (`torch_service.torchscript`)."""
        return load_file(model, self._device)

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        """Writes `model.torchscript.pt` or `model.onnx` from the version's weights, traced
        on CPU copies of them whatever this backend's device."""
        if runtime not in _EXPORTED:
            raise InvalidInput(
                f"TorchBackend exports the runtimes {', '.join(_EXPORTED)}, not '{runtime}'"
            )
        config = _read_config(version_dir)
        module = _restore(version_dir, architecture, config, torch.device("cpu"))
        started = time.perf_counter()
        if runtime == "torchscript":
            export_torchscript(module, version_dir / TORCHSCRIPT_FILE)
        else:
            export_onnx(
                module, version_dir / ONNX_FILE, config["input_name"], config["output_name"]
            )
        elapsed = time.perf_counter() - started
        logger.info("exported %s as %s in %.2f s", version_dir, runtime, elapsed)


def _check_device(device: str) -> torch.device:
    if not _DEVICE.fullmatch(device):
        raise InvalidInput(f"unsupported device '{device}': use 'cpu', 'cuda' or 'cuda:N'")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            reason = f"this PyTorch build ({torch.__version__}) has no CUDA support"
        else:
            reason = f"PyTorch (CUDA {torch.version.cuda}) finds no usable GPU or driver"
        raise BackendUnavailable(
            f"device '{device}' requested but no CUDA device is available to PyTorch: {reason}"
        )
    chosen = torch.device(device)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise BackendUnavailable(
            f"device '{device}' requested but PyTorch sees {torch.cuda.device_count()} CUDA "
            "device(s)"
        )
    return chosen


def _architecture(
    name: str, *, error: type[InvalidInput | RepositoryError]
) -> type[TrainableModule]:
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise error(f"unknown architecture '{name}': PyTorch supports {known}")
    return ARCHITECTURES[name]


def _build(architecture: str, kwargs: dict[str, Any]) -> TrainableModule:
    try:
        return _architecture(architecture, error=RepositoryError)(**kwargs)
    except TypeError as exc:  # kwargs from a config written by another version of the code
        raise RepositoryError(
            f"architecture '{architecture}' does not take {sorted(kwargs)}"
        ) from exc


def _check_architecture(version_dir: Path, architecture: str, config: dict[str, Any]) -> None:
    if config["architecture"] != architecture:
        raise RepositoryError(
            f"{version_dir / CONFIG_FILE} holds architecture '{config['architecture']}', "
            f"not '{architecture}'"
        )


def _restore(
    version_dir: Path, architecture: str, config: dict[str, Any], device: torch.device
) -> TrainableModule:
    """The trained module, rebuilt from `config` and filled from the weights, in eval mode."""
    _check_architecture(version_dir, architecture, config)
    module = _build(architecture, config["kwargs"])
    state = _read_weights(version_dir / WEIGHTS_FILE, device)
    try:
        module.load_state_dict(state)  # strict: a missing or extra tensor is an error
    except RuntimeError as exc:
        raise RepositoryError(
            f"{version_dir / WEIGHTS_FILE} does not fit architecture '{architecture}'"
        ) from exc
    return module.to(device).eval()


def _save(model: nn.Module, spec: TrainSpec, kwargs: dict[str, int], version_dir: Path) -> None:
    torch.save(model.state_dict(), version_dir / WEIGHTS_FILE)
    config = {
        "architecture": spec.architecture,
        "kwargs": kwargs,
        "input_name": spec.input_name,
        "output_name": spec.output_name,
        "torch_version": torch.__version__,
    }
    (version_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def _read_config(version_dir: Path) -> dict[str, Any]:
    path = version_dir / CONFIG_FILE
    if not path.is_file():
        raise RepositoryError(f"{version_dir} has no {CONFIG_FILE}: not a PyTorch model version")
    try:
        config = json.loads(path.read_text())
        names = ("architecture", "input_name", "output_name")
        if not (
            all(isinstance(config[k], str) for k in names) and isinstance(config["kwargs"], dict)
        ):
            raise TypeError("wrong field types")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"{path} is not a valid PyTorch model config: {exc}") from exc
    return dict(config)


def _read_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RepositoryError(f"{path.parent} has no {WEIGHTS_FILE}")
    try:
        state = torch.load(path, weights_only=True, map_location=device)
    # A damaged file surfaces as RuntimeError, KeyError, EOFError or UnpicklingError
    # depending on where it breaks; all of them mean the same thing here.
    except Exception as exc:
        logger.warning("cannot read %s", path, exc_info=True)
        raise RepositoryError(f"{path} is not a readable PyTorch state_dict") from exc
    if not isinstance(state, dict):
        raise RepositoryError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state
