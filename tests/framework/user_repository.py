"""A Triton model repository of models twinserve's training did not write, built the way users
of Triton build theirs, and what each model computes in process (the answers the services must
give exactly).

    keras_pair   Keras functional, inputs ids INT64 [4] and features FP32 [3], outputs score
                 and probs; a SavedModel with a config.pbtxt giving only max_batch_size 8 and a
                 batcher (the tensors auto-completed from the signature)
    torch_pair   torch.nn.Module, the same two inputs, a tuple of two outputs; TorchScript with
                 the config.pbtxt Triton requires (unbatched: full dims)
    onnx_auto    a torch module exported to ONNX with a dynamic batch axis; no config.pbtxt
    tf_text      a tf.Module over BYTES (tf.string): lengths INT32 and upper-cased BYTES; none
    bad_*        refused configurations: each must fail its own load with the reason while
                 the others serve (BAD: name -> what its reason says)
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["BAD", "GOOD", "UserRepository", "build"]

Arrays = dict[str, np.ndarray]

# Which services serve each good model (ONNX: every service; the gateway's default first).
GOOD: dict[str, tuple[str, ...]] = {
    "keras_pair": ("tensorflow",),
    "torch_pair": ("pytorch",),
    "onnx_auto": ("tensorflow", "pytorch", "onnx"),
    "tf_text": ("tensorflow",),
}
# A refused model -> (the framework whose service refuses it, a fragment of its reason).
BAD: dict[str, tuple[str, str]] = {
    "bad_platform": ("pytorch", "is platform 'tensorrt_plan', which twinserve does not serve"),
    "bad_dims": ("onnx", "input 'x' is declared with shape [-1, 5], but the ONNX graph has"),
    "bad_dtype": ("onnx", "input 'n' is declared INT32, but the ONNX graph takes INT64"),
    "missing_file": ("pytorch", "has no complete version: 1 hold(s) no model.json or model.pt"),
    "torch_no_config": ("pytorch", "torch_no_config/config.pbtxt must declare the inputs"),
}

_TORCH_PAIR = """
platform: "pytorch_libtorch"
input [
  { name: "ids" data_type: TYPE_INT64 dims: [ -1, 4 ] },
  { name: "features" data_type: TYPE_FP32 dims: [ -1, 3 ] }
]
output [
  { name: "score__0" data_type: TYPE_FP32 dims: [ -1, 1 ] },
  { name: "probs__1" data_type: TYPE_FP32 dims: [ -1, 3 ] }
]
"""
_ONNX_DECLARED = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {{ name: "x" data_type: TYPE_FP32 dims: [ {x} ] }},
  {{ name: "n" data_type: {n} dims: [ 1 ] }}
]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }} ]
"""


@dataclass(frozen=True)
class UserRepository:
    root: Path
    # Model -> the function computing its outputs in process, from its inputs.
    compute: Mapping[str, Callable[[Arrays], Arrays]]


def _keras_pair(version: Path) -> Callable[[Arrays], Arrays]:
    import keras  # noqa: PLC0415 (imported where a framework is wanted)

    keras.utils.set_random_seed(7)
    ids = keras.Input(shape=(4,), dtype="int64", name="ids")
    features = keras.Input(shape=(3,), dtype="float32", name="features")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 3)(ids))
    joined = keras.layers.Concatenate()([pooled, features])
    score = keras.layers.Dense(1, name="score")(joined)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(joined)
    model = keras.Model([ids, features], {"score": score, "probs": probs})
    model.export(str(version / "model.savedmodel"), verbose=False)

    def compute(inputs: Arrays) -> Arrays:
        out = model({"ids": inputs["ids"], "features": inputs["features"]}, training=False)
        return {name: np.asarray(value) for name, value in out.items()}

    return compute


def _tf_text(version: Path) -> Callable[[Arrays], Arrays]:
    import tensorflow as tf  # noqa: PLC0415

    class Text(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(text), "upper": tf.strings.upper(text)}

    module = Text()
    tf.saved_model.save(
        module, str(version / "model.savedmodel"), signatures={"serving_default": module.serve}
    )

    def compute(inputs: Arrays) -> Arrays:
        out = module.serve(tf.constant(inputs["text"], tf.string))
        return {name: value.numpy() for name, value in out.items()}

    return compute


def _torch_modules() -> tuple[object, object]:
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    torch.manual_seed(7)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.score = nn.Linear(6, 1)
            self.probs = nn.Linear(6, 3)

        def forward(
            self, ids: torch.Tensor, features: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            joined = torch.cat([self.embed(ids).mean(dim=1), features], dim=1)
            return self.score(joined), torch.softmax(self.probs(joined), dim=1)

    class Affine(nn.Module):
        """y = x W + n: a float and an integer input, as users' models mix them."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + n.to(torch.float32)

    return Pair().eval(), Affine().eval()


def _torch_pair(version: Path, module: object) -> Callable[[Arrays], Arrays]:
    import torch  # noqa: PLC0415

    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, and still what Triton serves.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
    scripted.save(str(version / "model.pt"))

    def compute(inputs: Arrays) -> Arrays:
        with torch.inference_mode():
            score, probs = scripted(
                torch.from_numpy(inputs["ids"].copy()), torch.from_numpy(inputs["features"].copy())
            )
        return {"score__0": score.numpy(), "probs__1": probs.numpy()}

    return compute


def _onnx_auto(version: Path, module: object) -> Callable[[Arrays], Arrays]:
    import onnxruntime as ort  # noqa: PLC0415

    path = version / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        _export_onnx(module, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def compute(inputs: Arrays) -> Arrays:
        (y,) = session.run(["y"], {"x": inputs["x"], "n": inputs["n"]})
        return {"y": y}

    return compute


def _export_onnx(module: object, path: Path) -> None:
    import torch  # noqa: PLC0415

    torch.onnx.export(
        module,
        (torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.int64)),
        str(path),
        input_names=["x", "n"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "n": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )


def _version(root: Path, model: str, config: str | None = None) -> Path:
    version = root / model / "1"
    version.mkdir(parents=True)
    if config is not None:
        (root / model / "config.pbtxt").write_text(config)
    return version


def build(root: Path) -> UserRepository:
    """Writes every model into `root` (a fresh directory); TensorFlow, PyTorch and ONNX
    Runtime must be importable."""
    pair, affine = _torch_modules()
    compute = {
        "keras_pair": _keras_pair(
            _version(root, "keras_pair", "max_batch_size: 8\ndynamic_batching { }\n")
        ),
        "torch_pair": _torch_pair(_version(root, "torch_pair", _TORCH_PAIR), pair),
        "onnx_auto": _onnx_auto(_version(root, "onnx_auto"), affine),
        "tf_text": _tf_text(_version(root, "tf_text")),
    }
    onnx = root / "onnx_auto" / "1" / "model.onnx"
    shutil.copy(onnx, _version(root, "bad_dims", _ONNX_DECLARED.format(x=5, n="TYPE_INT64")))
    shutil.copy(onnx, _version(root, "bad_dtype", _ONNX_DECLARED.format(x=3, n="TYPE_INT32")))
    (_version(root, "bad_platform", 'platform: "tensorrt_plan"') / "model.plan").write_bytes(b"")
    (_version(root, "missing_file", _TORCH_PAIR) / "README").write_text("no model here")
    shutil.copy(root / "torch_pair" / "1" / "model.pt", _version(root, "torch_no_config"))
    return UserRepository(root, compute)
