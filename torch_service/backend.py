"""The PyTorch backend: trains the shared architectures and serves them in eager mode.

A version directory holds `weights.pt` (a bare state_dict) and `torch_config.json` (which
module to build and its tensor names). Loading rebuilds the module from `ARCHITECTURES` and
reads the weights with `weights_only=True`, so a model file can never run code.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from serving.backend import TrainResult, TrainSpec
from serving.errors import BackendUnavailable, InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec
from torch_service.models import ARCHITECTURES, LinearRegressor

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "TorchBackend", "TorchModel"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "torch_config.json"
WEIGHTS_FILE = "weights.pt"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


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
    platform = "pytorch_eager"

    def __init__(self, *, device: str = "cpu", threads: int = 0) -> None:
        if threads < 0:
            raise InvalidInput(f"threads must be >= 0 (0 keeps PyTorch's default), not {threads}")
        if threads > 0:
            # Process-wide: every model in this service shares one intra-op pool.
            torch.set_num_threads(threads)
        self.device = _check_device(device)

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        module = _build(spec.architecture, {}, error=InvalidInput)
        if not isinstance(module, LinearRegressor):  # the only trainer so far
            raise InvalidInput(f"architecture '{spec.architecture}' cannot be trained yet")
        x, y = _check_data(spec)
        started = time.perf_counter()
        metrics = _fit(module, spec, x.to(self.device), y.to(self.device))
        logger.info(
            "trained %s on %s in %.2fs: %s",
            spec.architecture,
            self.device,
            time.perf_counter() - started,
            metrics,
        )
        _save(module.to("cpu"), spec, version_dir)
        spec_in = TensorSpec(spec.input_name, "FP32", (-1, 1))
        spec_out = TensorSpec(spec.output_name, "FP32", (-1, 1))
        return TrainResult(Signature(inputs=(spec_in,), outputs=(spec_out,)), metrics)

    def load(self, version_dir: Path, architecture: str) -> TorchModel:
        config = _read_config(version_dir)
        if config["architecture"] != architecture:
            raise RepositoryError(
                f"{version_dir / CONFIG_FILE} holds architecture '{config['architecture']}', "
                f"not '{architecture}'"
            )
        module = _build(architecture, config["kwargs"], error=RepositoryError)
        state = _read_weights(version_dir / WEIGHTS_FILE, self.device)
        try:
            module.load_state_dict(state)  # strict: a missing or extra tensor is an error
        except RuntimeError as exc:
            raise RepositoryError(
                f"{version_dir / WEIGHTS_FILE} does not fit architecture '{architecture}'"
            ) from exc
        module.to(self.device).eval()
        logger.debug("loaded %s from %s on %s", architecture, version_dir, self.device)
        return TorchModel(module, config["input_name"], config["output_name"], self.device)


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


def _build(
    architecture: str, kwargs: dict[str, Any], *, error: type[InvalidInput | RepositoryError]
) -> nn.Module:
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise error(f"unknown architecture '{architecture}': PyTorch supports {known}")
    try:
        return ARCHITECTURES[architecture](**kwargs)
    except TypeError as exc:  # kwargs from a config written by another version of the code
        raise error(f"architecture '{architecture}' does not take {sorted(kwargs)}") from exc


def _check_data(spec: TrainSpec) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(spec.x, dtype=np.float32)
    y = np.asarray(spec.y, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 1 or y.shape != x.shape:
        raise InvalidInput(f"'linear' needs x and y of shape [n, 1], got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInput("training data contains NaN or infinity")
    if spec.epochs < 1 or spec.batch_size < 1 or not spec.learning_rate > 0:
        raise InvalidInput("epochs and batch_size must be >= 1 and learning_rate > 0")
    if not 0 <= spec.validation_split < 1:
        raise InvalidInput(f"validation_split must be in [0, 1), not {spec.validation_split}")
    if len(x) - int(len(x) * spec.validation_split) < 1:
        raise InvalidInput("no training rows left after the validation split")
    # Copies: the tensors must not alias the caller's arrays.
    return torch.tensor(x), torch.tensor(y)


def _fit(
    model: LinearRegressor, spec: TrainSpec, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    # A private generator rather than torch.manual_seed: the same seed gives bit-identical
    # weights without touching the process-wide RNG that other threads may be using.
    generator = torch.Generator().manual_seed(spec.seed)
    model.reset_parameters(generator)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    n_val = int(len(x) * spec.validation_split)
    train_idx, val_idx = order[: len(x) - n_val], order[len(x) - n_val :]
    # Statistics from the training split only, so validation stays unseen.
    model.to(x.device).set_statistics(x[train_idx], y[train_idx])
    x_train, y_train = x[train_idx], model.normalize_target(y[train_idx])
    x_val, y_val = x[val_idx], y[val_idx]

    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    metrics: dict[str, float] = {}
    for epoch in range(1, spec.epochs + 1):
        loss = _epoch(
            model, optimizer, x_train, y_train, batch_size=spec.batch_size, generator=generator
        )
        metrics = {"loss": loss}
        if n_val:
            with torch.no_grad():
                val_pred = model.forward_normalized(x_val)
                val_loss = nn.functional.mse_loss(val_pred, model.normalize_target(y_val))
            metrics["val_loss"] = float(val_loss)
        if spec.on_epoch is not None:
            spec.on_epoch(epoch, dict(metrics))
    # Without a validation split the RMSE falls back to the training rows.
    x_eval, y_eval = (x_val, y_val) if n_val else (x[train_idx], y[train_idx])
    with torch.no_grad():
        metrics["rmse"] = math.sqrt(float(nn.functional.mse_loss(model(x_eval), y_eval)))
    metrics["weight"] = model.slope()
    return metrics


def _epoch(
    model: LinearRegressor,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One shuffled pass; returns the mean loss over rows, as Keras reports it."""
    model.train()
    total = torch.zeros((), device=x.device)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    # torch.split and autograd.backward: the typed spellings of .split() and .backward().
    for batch in torch.split(order, batch_size):
        loss = nn.functional.mse_loss(model.forward_normalized(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        total += loss.detach() * len(batch)
    model.eval()
    return float(total) / len(x)


def _save(model: nn.Module, spec: TrainSpec, version_dir: Path) -> None:
    torch.save(model.state_dict(), version_dir / WEIGHTS_FILE)
    config = {
        "architecture": spec.architecture,
        "kwargs": {},
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
