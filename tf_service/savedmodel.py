"""SavedModels served through their `serving_default` signature (Triton's default): the ones
`TFBackend.train` writes and the ones users bring in Triton's layout
(`<model>/<version>/model.savedmodel`), by one class, `SavedModel`.

A user's SavedModel is checked against the signature the core resolved from its
`config.pbtxt` when it loads (`load_file`), and every request against the file's own
signature before TensorFlow sees it (`_InputCheck`). Error messages name the tensor and
the directory's own name, never where it lies: they reach clients (the log has the path).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import tensorflow as tf

from serving.backend import ModelFile
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["DATATYPES", "SERVING_KEY", "SavedModel", "describe", "load_file", "open_savedmodel"]

logger = logging.getLogger(__name__)

SERVING_KEY = "serving_default"

# TensorFlow's dtypes and the Open Inference Protocol's datatypes. Anything else (complex,
# quantised, resource and variant tensors) has no datatype on the wire and is not served.
DATATYPES: Mapping[tf.DType, str] = MappingProxyType(
    {
        tf.bool: "BOOL",
        tf.int8: "INT8",
        tf.int16: "INT16",
        tf.int32: "INT32",
        tf.int64: "INT64",
        tf.uint8: "UINT8",
        tf.uint16: "UINT16",
        tf.uint32: "UINT32",
        tf.uint64: "UINT64",
        tf.float16: "FP16",
        tf.float32: "FP32",
        tf.float64: "FP64",
        tf.bfloat16: "BF16",
        tf.string: "BYTES",
    }
)


def needs_scope(device: str) -> bool:
    """Whether ops must be pinned to `device` (from `device_for`). With no GPU visible
    TensorFlow can only use the CPU, so the hot path saves entering a scope per call."""
    return not device.startswith("/CPU") or bool(tf.config.list_physical_devices("GPU"))


def placement(device: str) -> contextlib.AbstractContextManager[Any]:
    return tf.device(device) if needs_scope(device) else contextlib.nullcontext()


def open_savedmodel(path: Path) -> tuple[Any, Any]:
    """The SavedModel in the directory `path` and its serving function; keep the first while
    using the second (the function holds its variables weakly). Variables go to the device
    scope this runs in."""
    if not any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise RepositoryError(f"'{path.name}' is not a TensorFlow SavedModel (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # corrupt files surface as many TF and protobuf error types
        logger.warning("cannot load the SavedModel %s", path, exc_info=True)
        raise RepositoryError(
            f"cannot load the SavedModel '{path.name}': {type(exc).__name__}"
        ) from exc
    function = loaded.signatures.get(SERVING_KEY)
    if function is None:
        names = ", ".join(f"'{name}'" for name in sorted(loaded.signatures)) or "none"
        raise RepositoryError(
            f"the SavedModel '{path.name}' has no '{SERVING_KEY}' signature (it has: {names})"
        )
    return loaded, function


def _specs(function: Any) -> tuple[dict[str, tf.TensorSpec], dict[str, tf.TensorSpec]]:
    """The serving function's inputs and outputs by the names clients use (the signature's
    keys, which may differ from the graph's tensor names)."""
    _, kwargs = function.structured_input_signature
    outputs = function.structured_outputs
    if not isinstance(outputs, Mapping):  # signatures return dicts; anything else is not one
        raise RepositoryError(f"the '{SERVING_KEY}' signature does not return named outputs")
    return dict(kwargs), dict(outputs)


def _datatype(what: str, dtype: tf.DType) -> str:
    datatype = DATATYPES.get(dtype)
    if datatype is None:
        raise RepositoryError(f"{what} is {dtype.name}, which is not served")
    return datatype


def _dims(shape: tf.TensorShape) -> tuple[int, ...] | None:
    """-1 for every dimension left open; None for an unknown rank."""
    if shape.rank is None:
        return None
    return tuple(-1 if dim is None else int(dim) for dim in shape.as_list())


def _described(kind: str, name: str, spec: tf.TensorSpec) -> TensorSpec:
    what = f"{kind} '{name}'"
    datatype = _datatype(what, spec.dtype)
    dims = _dims(spec.shape)
    if dims is None:
        raise RepositoryError(
            f"{what} has no fixed rank in the SavedModel: declare its dims in config.pbtxt"
        )
    return TensorSpec(name, datatype, dims)


def describe(path: Path) -> Signature:
    """The signature `path`'s `serving_default` declares (see `Backend.describe`). Its
    variables are loaded on the CPU and dropped: only the signature is read."""
    with tf.device("/CPU:0"):
        loaded, function = open_savedmodel(path)
    inputs, outputs = _specs(function)
    del loaded
    return Signature(
        inputs=tuple(_described("input", name, spec) for name, spec in inputs.items()),
        outputs=tuple(_described("output", name, spec) for name, spec in outputs.items()),
    )


def _fitted(kind: str, declared: TensorSpec, spec: tf.TensorSpec) -> list[int | None]:
    """The shape a tensor must have: `declared` checked against the file's `spec`, with the
    dimensions either fixes (a declaration may fix what the file leaves open, or give the
    rank the file does not)."""
    what = f"{kind} '{declared.name}'"
    verb = "takes" if kind == "input" else "returns"
    datatype = _datatype(what, spec.dtype)
    if declared.datatype != datatype:
        raise RepositoryError(
            f"{what} is declared {declared.datatype} but the SavedModel {verb} {spec.dtype.name}"
        )
    dims = _dims(spec.shape)
    if dims is None:
        dims = declared.shape
    elif len(dims) != len(declared.shape) or any(
        want not in (-1, got) for got, want in zip(declared.shape, dims, strict=True)
    ):
        raise RepositoryError(
            f"{what} is declared with dims {list(declared.shape)} but the SavedModel {verb} "
            f"{list(dims)} (-1 is any size)"
        )
    fixed = (
        mine if theirs == -1 else theirs for mine, theirs in zip(declared.shape, dims, strict=True)
    )
    return [None if dim == -1 else dim for dim in fixed]


def _fit(signature: Signature, function: Any) -> dict[str, list[int | None]]:
    """Refuses a `signature` the serving function does not take or return; the shape each
    input must have."""
    inputs, outputs = _specs(function)
    for spec in signature.inputs:
        if spec.name not in inputs:
            raise RepositoryError(
                f"input '{spec.name}' is declared but the SavedModel takes no such input "
                f"(it takes: {', '.join(inputs) or 'none'})"
            )
    undeclared = ", ".join(repr(name) for name in inputs if signature.input(name) is None)
    if undeclared:
        # The function needs every one, and a request checked against the declaration
        # could never give it.
        raise RepositoryError(
            f"the SavedModel takes input(s) {undeclared} that are not declared: "
            "declare every input it takes"
        )
    for spec in signature.outputs:
        if spec.name not in outputs:
            raise RepositoryError(
                f"output '{spec.name}' is declared but the SavedModel returns no such output "
                f"(it returns: {', '.join(outputs) or 'none'})"
            )
        _fitted("output", spec, outputs[spec.name])
    return {spec.name: _fitted("input", spec, inputs[spec.name]) for spec in signature.inputs}


def load_file(model: ModelFile, device: str) -> SavedModel:
    """A user's SavedModel (`model.path`), served by `model.signature` on `device` (from
    `device_for`); RepositoryError when it does not fit the signature."""
    with placement(device):  # variables live where the ops will run
        loaded, function = open_savedmodel(model.path)
    shapes = _fit(model.signature, function)
    outputs = tuple(spec.name for spec in model.signature.outputs)
    return SavedModel(loaded, function, device, shapes=shapes, outputs=outputs)


class _InputCheck:
    """One signature input: its dtype and shape, checked before TensorFlow sees a tensor.

    Not only a nicety: oneDNN's kernels (TensorFlow's default on Intel CPUs) abort the whole
    process on some inputs they were not built for (a convolution fed the wrong rank calls
    `abort()` in `MklDnnConvUtil`), where the portable kernels raise. So the backend refuses
    anything the signature does not declare, whatever its caller validated."""

    def __init__(self, name: str, dtype: tf.DType, shape: list[int | None]) -> None:
        self.name = name
        self.dtype = dtype
        # tf.string's is `object`, which anything casts to: strings are checked by kind.
        self.np_dtype = np.dtype(dtype.as_numpy_dtype)
        self.shape = shape

    def describe(self) -> str:
        return f"{self.name} {self.dtype.name} {self.shape}"

    def tensor(self, array: np.ndarray) -> tf.Tensor:
        if (
            array.dtype.kind not in "OSU"
            if self.dtype == tf.string
            else not np.can_cast(array.dtype, self.np_dtype, casting="same_kind")
        ):
            raise InvalidInput(
                f"input '{self.name}' must be {self.dtype.name}, got NumPy {array.dtype}"
            )
        if len(array.shape) != len(self.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape, self.shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{self.name}' has shape {list(array.shape)}, the model expects "
                f"{self.shape} (None is any size)"
            )
        if self.dtype == tf.bfloat16:
            # BF16 arrives widened to float32; NumPy's bfloat16 (ml_dtypes) rounds to nearest.
            array = array.astype(self.np_dtype)
        try:
            return tf.constant(array, self.dtype)
        except (TypeError, ValueError) as exc:  # an object array holding other than strings
            raise InvalidInput(f"input '{self.name}' must be {self.dtype.name}") from exc


def _numpy(tensor: tf.Tensor) -> np.ndarray:
    # A scalar's `numpy()` is a NumPy scalar, or `bytes` for a string: make it an array.
    # BF16 is NumPy's (ml_dtypes') bfloat16, which the protocol's codec does not take:
    # widened to float32 (exactly) in NumPy, so no op runs outside the device scope.
    if tensor.dtype == tf.string:
        return np.asarray(tensor.numpy(), dtype=object)
    return np.asarray(tensor.numpy(), dtype=np.float32 if tensor.dtype == tf.bfloat16 else None)


def _shape(name: str, spec: tf.TensorSpec) -> list[int | None]:
    if spec.shape.rank is None:
        raise RepositoryError(
            f"input '{name}' has no fixed rank in the SavedModel: declare its dims in config.pbtxt"
        )
    shape: list[int | None] = spec.shape.as_list()
    return shape


class SavedModel:
    """A loaded SavedModel version; concrete functions are safe to call from many threads.

    `shapes` narrows the inputs' shapes (a user's declaration may fix dimensions the file
    leaves open, or give the rank it does not); `outputs` are the outputs returned, every
    one the function has when None."""

    def __init__(
        self,
        loaded: Any,
        function: Any,
        device: str = "/CPU:0",
        *,
        shapes: Mapping[str, list[int | None]] | None = None,
        outputs: tuple[str, ...] | None = None,
    ) -> None:
        # The concrete function holds its variables weakly; `loaded` keeps them alive.
        self._loaded: Any = loaded
        self._function: Any = function
        inputs, _ = _specs(function)
        if shapes is None:
            shapes = {name: _shape(name, spec) for name, spec in inputs.items()}
        self._inputs = [
            _InputCheck(name, spec.dtype, shapes[name]) for name, spec in inputs.items()
        ]
        self._outputs = outputs
        self._expected = ", ".join(check.describe() for check in self._inputs)
        self._device = device
        self._scoped = needs_scope(device)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = self._function  # one read: close() may run concurrently
        if function is None:
            raise ModelNotReady("the model version was unloaded")
        missing = [check.name for check in self._inputs if check.name not in inputs]
        if missing:
            raise InvalidInput(
                f"missing model input(s): {', '.join(sorted(missing))}; "
                f"the model expects {self._expected}"
            )
        tensors = {check.name: check.tensor(inputs[check.name]) for check in self._inputs}
        try:
            with tf.device(self._device) if self._scoped else contextlib.nullcontext():
                outputs = function(**tensors)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            # The checks above cover what the signature declares; this is what is left.
            raise InvalidInput(f"the model expects {self._expected}") from exc
        names = outputs if self._outputs is None else self._outputs
        return {name: _numpy(outputs[name]) for name in names}

    def close(self) -> None:
        self._function = None
        self._loaded = None
