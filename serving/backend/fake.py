"""A NumPy backend for testing the core without TensorFlow or PyTorch (as httpx ships
`MockTransport`). `linear` and `mlp` are both fitted as y = x W + b by least squares; the
epochs only report progress (optionally slowly, for cancel tests), and a learning rate above
1000 "diverges" (reports a NaN loss), as gradient descent would. Its one export is ONNX,
built with onnx.helper, so the core's ONNX runtime is tested for real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from serving.backend import Model, ModelFile, TrainResult, TrainSpec
from serving.backend.architectures import get, signature_for
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["AffineBackend"]

_FILE = "affine.json"


class _AffineModel:
    def __init__(self, raw: dict[str, Any], owner: AffineBackend) -> None:
        self.weights: np.ndarray = raw["weights"]
        self.bias: float = raw["bias"]
        self.input_name: str = raw["input"]
        self.output_name: str = raw["output"]
        self.owner = owner
        self.is_closed = False

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.owner.gate is not None:
            self.owner.gate.wait()  # lets tests hold a call in flight
        if self.is_closed:
            raise ModelNotReady("model has been unloaded")
        x = inputs[self.input_name].astype(np.float64).reshape(len(inputs[self.input_name]), -1)
        return {self.output_name: (x @ self.weights + self.bias).astype(np.float32)}

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self.owner.closed += 1


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    design = np.hstack([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, y.reshape(-1, 1).astype(np.float64), rcond=None)
    return solution[:-1], float(solution[-1, 0])


class AffineBackend:
    runtimes: Mapping[str, str] = {"native": "numpy_affine", "onnx": "onnxruntime_onnx"}
    device = "cpu"  # NumPy runs on the CPU only
    triton_platform = "numpy_affine"
    triton_backend = "numpy"

    def __init__(
        self,
        *,
        framework: str = "fake",
        gate: threading.Event | None = None,
        epoch_delay: float = 0.0,
        export_skew: float = 0.0,
    ) -> None:
        # `framework` lets one test stand up fake "tensorflow" and "pytorch" services;
        # `export_skew` shifts the ONNX export's bias, to test exports that disagree.
        self.framework = framework
        self.gate = gate
        self.epoch_delay = epoch_delay
        self.export_skew = export_skew
        self.closed = 0  # models closed so far: tests check that old versions are released

    def device_stats(self) -> dict[str, float]:
        return {}  # a CPU: nothing to report

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        if spec.architecture not in ("linear", "mlp"):
            raise InvalidInput(
                f"the fake backend trains 'linear' and 'mlp', not '{spec.architecture}'"
            )
        if spec.device not in ("", "cpu"):
            raise InvalidInput(f"unsupported device '{spec.device}': the fake runs on 'cpu' only")
        started = time.perf_counter()
        weights, bias = _fit(spec.x, spec.y)
        for epoch in range(1, spec.epochs + 1):
            if self.epoch_delay:
                time.sleep(self.epoch_delay)
            loss = float("nan") if spec.learning_rate > 1000 else 1.0 / epoch
            metrics = {"loss": loss}
            if len(spec.x_val):
                predicted = spec.x_val.reshape(len(spec.x_val), -1) @ weights + bias
                rmse = float(np.sqrt(np.mean((predicted - spec.y_val) ** 2)))
                metrics |= {"val_loss": loss, "val_metric": rmse}
            if spec.on_epoch is not None:
                spec.on_epoch(epoch, metrics)
        stored = {
            "weights": weights.reshape(-1).tolist(),
            "bias": bias,
            "input": spec.input_name,
            "output": spec.output_name,
        }
        (version_dir / _FILE).write_text(json.dumps(stored))
        signature = signature_for(
            get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
        )
        # The last epoch's metrics and the time taken, as the real backends report them.
        return TrainResult(signature, {**metrics, "train_seconds": time.perf_counter() - started})

    def describe(self, path: Path) -> Signature | None:
        """A user's affine file (`default_model_filename: "affine.json"`) declares its
        tensors: one FP32 input of its weights' width, one FP32 output."""
        raw = self._read(path.parent, path.name)
        return Signature(
            inputs=(TensorSpec(raw["input"], "FP32", (-1, len(raw["weights"]))),),
            outputs=(TensorSpec(raw["output"], "FP32", (-1, 1)),),
        )

    def load_file(self, model: ModelFile) -> Model:
        own = self.describe(model.path)
        assert own is not None
        names = (
            [s.name for s in model.signature.inputs],
            [s.name for s in model.signature.outputs],
        )
        if names != ([s.name for s in own.inputs], [s.name for s in own.outputs]):
            raise RepositoryError(
                f"the declared tensors {names} are not the affine file's "
                f"{([s.name for s in own.inputs], [s.name for s in own.outputs])}"
            )
        return _AffineModel(self._read(model.path.parent, model.path.name), self)

    def _read(self, version_dir: Path, filename: str = _FILE) -> dict[str, Any]:
        try:
            raw: dict[str, Any] = json.loads((version_dir / filename).read_text())
            raw["weights"] = np.asarray(raw["weights"], dtype=np.float64).reshape(-1, 1)
            raw["bias"] = float(raw["bias"])
            str(raw["input"]), str(raw["output"])
        except FileNotFoundError as exc:
            raise RepositoryError(f"cannot load the version: it has no {_FILE}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The parser's own words stay in the log (the chained cause), not in the reason.
            raise RepositoryError(
                f"cannot load the version: {_FILE} is not an affine model"
            ) from exc
        return raw

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        if runtime != "native":
            raise InvalidInput(f"the fake backend loads only its native runtime, not {runtime}")
        return _AffineModel(self._read(version_dir), self)

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        if runtime != "onnx":
            raise InvalidInput(f"the fake backend exports only onnx, not {runtime}")
        raw = self._read(version_dir)
        weights = raw["weights"].astype(np.float32)
        bias = np.array([raw["bias"] + self.export_skew], dtype=np.float32)
        x, y = raw["input"], raw["output"]  # the signature's names, as the contract asks
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", [x, "w"], ["xw"]),
                helper.make_node("Add", ["xw", "b"], [y]),
            ],
            "affine",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", len(weights)])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", 1])],
            initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # readable by every onnxruntime release this project accepts
        (version_dir / "model.onnx").write_bytes(model.SerializeToString())
