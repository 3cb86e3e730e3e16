"""A user's own TorchScript file (Triton's `pytorch_libtorch` platform: `<model>/<version>/
model.pt`), served by the signature its `config.pbtxt` declares, since TorchScript declares
none. Inputs and outputs map onto `forward` as Triton's PyTorch backend maps them
(pytorch_backend, src/pt/model_instance_state.cc: ValidateInputs, GetNamingConvention,
ValidateOutputs, Execute):

- inputs: all named after `forward`'s arguments -> by name; else all `<name>__<index>`
  (the digits after the first `__`) -> argument `index`; else in the declared order. A
  `forward` taking a single `Dict[str, Tensor]` gets every input in it, by name.
- outputs: a Tensor is the single declared output; a tuple or list is read by the outputs'
  `<name>__<index>` names if all have one, else in the declared order; a `Dict[str, Tensor]`
  (which Triton refuses) by key.

What the schema tells (argument count and types, a tuple's length) is checked at load; the
rest (a list's length, a dict's keys, every output's dtype and shape) at each call, and the
core's warm-up call right after loading turns a mismatch into a load failure. Output
datatypes must match exactly, as in Triton: a silent cast would hide a misdeclared config.

`torch.jit.load` reads TorchScript code and tensors with its own restricted unpickler, so a
`torch.save`d checkpoint (pickled Python) is refused, never run. The file's TorchScript code
does run (it is the model): like Triton, this trusts the repository's files.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import torch

from serving.backend import ModelFile
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec
from torch_service.export import _torch_deprecations_ignored

__all__ = ["TorchScriptModel", "load_file"]

logger = logging.getLogger(__name__)

# datatype -> the NumPy dtype `serving.protocol.codec` decodes it to, and the tensor's dtype.
# BF16 arrives widened to float32. The unsigned types past 8 bits are "shell" dtypes in torch
# (>= 2.3): they convert from NumPy and move between devices, though few operators take them.
# BYTES has no tensor dtype (Triton passes strings as List[str], which is not done here).
_TYPES: Final[dict[str, tuple[np.dtype[Any], torch.dtype]]] = {
    "BOOL": (np.dtype(np.bool_), torch.bool),
    "INT8": (np.dtype(np.int8), torch.int8),
    "INT16": (np.dtype(np.int16), torch.int16),
    "INT32": (np.dtype(np.int32), torch.int32),
    "INT64": (np.dtype(np.int64), torch.int64),
    "UINT8": (np.dtype(np.uint8), torch.uint8),
    "UINT16": (np.dtype(np.uint16), torch.uint16),
    "UINT32": (np.dtype(np.uint32), torch.uint32),
    "UINT64": (np.dtype(np.uint64), torch.uint64),
    "FP16": (np.dtype(np.float16), torch.float16),
    "FP32": (np.dtype(np.float32), torch.float32),
    "FP64": (np.dtype(np.float64), torch.float64),
    "BF16": (np.dtype(np.float32), torch.bfloat16),
}


@dataclass(frozen=True, slots=True)
class _Outputs:
    kind: str  # the return type's: "TensorType", "TupleType", "ListType" or "DictType"
    # Output name -> element of the returned tuple or list (unused for a Tensor or a dict).
    index: Mapping[str, int]


class TorchScriptModel:
    """A loaded TorchScript file. Safe to share between threads: the module is in eval mode,
    the TorchScript interpreter runs `forward` concurrently, and `inference_mode` is
    thread-local."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        signature: Signature,
        arguments: Mapping[str, int] | None,
        outputs: _Outputs,
        device: torch.device,
    ) -> None:
        self._module: torch.jit.ScriptModule | None = module
        self._signature = signature
        # The input names in forward's argument order; None: forward takes one dict of all.
        self._order = None if arguments is None else sorted(arguments, key=arguments.__getitem__)
        self._outputs = outputs
        self._device = device

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self._module  # one read, so a concurrent close() cannot pull it away mid-call
        if module is None:
            raise ModelNotReady("model has been unloaded")
        with torch.inference_mode():
            tensors = {
                spec.name: _to_tensor(spec, inputs.get(spec.name), self._device)
                for spec in self._signature.inputs
            }
            if self._order is None:
                returned = module(tensors)
            else:
                returned = module(*(tensors[name] for name in self._order))
            return {
                spec.name: _to_numpy(spec, self._pick(returned, spec.name))
                for spec in self._signature.outputs
            }

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _pick(self, returned: Any, name: str) -> Any:
        """The returned value that is output `name` (checked to be a tensor by `_to_numpy`)."""
        kind = self._outputs.kind
        if kind == "TensorType":
            return returned
        if kind == "DictType":
            if name not in returned:
                keys = ", ".join(sorted(returned)) or "none"
                raise RepositoryError(
                    f"the model's forward returned no '{name}' (its keys: {keys}); "
                    "declare outputs named after the keys of the dict it returns"
                )
            return returned[name]
        index = self._outputs.index[name]
        if index >= len(returned):
            raise RepositoryError(
                f"output '{name}' names forward's returned element {index}, but there are "
                f"{len(returned)}"
            )
        return returned[index]


def load_file(model: ModelFile, device: torch.device) -> TorchScriptModel:
    """`model.path`, a TorchScript file, on `device` in eval mode, its inputs and outputs
    mapped onto `forward` (see the module's docstring)."""
    signature = model.signature
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        if not specs:
            raise RepositoryError(f"the configuration declares no {kind}s")
        for spec in specs:
            _check_datatype(kind, spec)
    module = _read(model.path, device)
    try:
        schema = cast("torch.ScriptMethod[..., Any]", module.forward).schema
    except (AttributeError, RuntimeError) as exc:
        raise RepositoryError("the TorchScript module has no forward method") from exc
    parameters = schema.arguments
    if parameters and parameters[0].type.kind() == "ClassType":
        parameters = parameters[1:]  # self
    arguments = _map_inputs(parameters, signature.inputs)
    outputs = _map_outputs(schema.returns[0].type, signature.outputs)
    logger.debug("loaded TorchScript %s on %s", model.path, device)
    return TorchScriptModel(module, signature, arguments, outputs, device)


def _check_datatype(kind: str, spec: TensorSpec) -> None:
    if spec.datatype == "BYTES":
        raise RepositoryError(
            f"TorchScript takes no string tensors here: {kind} '{spec.name}' is BYTES; "
            f"declare a numeric datatype ({', '.join(_TYPES)})"
        )
    if spec.datatype not in _TYPES:
        raise RepositoryError(
            f"{kind} '{spec.name}' has datatype {spec.datatype}, which TorchScript models "
            f"do not take here (they take {', '.join(_TYPES)})"
        )


def _read(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    # Reasons name the file the user chose (`default_model_filename`), never where it lies.
    if not path.is_file():
        raise RepositoryError(f"the version has no model file '{path.name}'")
    try:
        with _torch_deprecations_ignored():
            # Unannotated in torch; the variable carries its documented type.
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=device
            )
    # A damaged or foreign file fails as RuntimeError or ValueError, depending on where.
    except Exception as exc:
        logger.warning("cannot load %s as TorchScript", path, exc_info=True)
        raise RepositoryError(_not_torchscript(path)) from exc
    return module.eval()


def _not_torchscript(path: Path) -> str:
    """Why `path` did not load, in the user's terms: most often it is a `torch.save`
    checkpoint (a zip of pickled Python and tensors, but no TorchScript code or constants)."""
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        pass
    fix = "save the model with torch.jit.script(model).save(...) or torch.jit.trace"
    if any(n.endswith("/data.pkl") for n in names) and not any(
        n.endswith("/constants.pkl") for n in names
    ):
        return (
            f"'{path.name}' is a torch.save checkpoint (a state_dict or a pickled module), "
            f"not TorchScript: {fix}"
        )
    return f"'{path.name}' is not a TorchScript archive: {fix}"


def _index_of(name: str) -> int | None:
    """The index of a `<name>__<index>` name: the digits after its first `__`, as Triton
    reads it (so "a__b__1" has none)."""
    _, separator, digits = name.partition("__")
    return int(digits) if separator and digits.isascii() and digits.isdigit() else None


def _positions(
    kind: str, noun: str, specs: Sequence[TensorSpec], count: int | None
) -> dict[str, int]:
    """Each tensor's position among forward's `count` arguments or returned elements (None:
    not known before a call): its `__<index>` if every name has one, else the declared order."""
    indices = [index for spec in specs if (index := _index_of(spec.name)) is not None]
    if len(indices) != len(specs):
        indices = list(range(len(specs)))
    taken: dict[int, str] = {}
    for spec, index in zip(specs, indices, strict=True):
        if index in taken:
            raise RepositoryError(
                f"{kind}s '{taken[index]}' and '{spec.name}' both name forward's {noun} {index}"
            )
        if count is not None and index >= count:
            raise RepositoryError(
                f"{kind} '{spec.name}' names forward's {noun} {index}, but there are {count}"
            )
        taken[index] = spec.name
    return {name: index for index, name in taken.items()}


def _map_inputs(
    parameters: Sequence[torch.Argument], specs: Sequence[TensorSpec]
) -> dict[str, int] | None:
    """Input name -> `forward` argument, or None for a `forward` taking one dict of them."""
    if len(parameters) == 1 and parameters[0].type.kind() == "DictType":
        if str(parameters[0].type) != "Dict[str, Tensor]":
            raise RepositoryError(
                f"the model's forward takes {parameters[0].type}; a dict input must be "
                "Dict[str, Tensor]"
            )
        return None
    for parameter in parameters:
        if parameter.type.kind() != "TensorType":
            raise RepositoryError(
                f"the model's forward argument '{parameter.name}' is {parameter.type}; "
                "only Tensor arguments (or a single Dict[str, Tensor]) are served"
            )
    names = [parameter.name for parameter in parameters]
    if len(names) != len(specs):
        raise RepositoryError(
            f"the model's forward takes {len(names)} inputs ({', '.join(names)}); the "
            f"configuration declares {len(specs)} ({', '.join(s.name for s in specs)})"
        )
    if all(spec.name in names for spec in specs):
        return {spec.name: names.index(spec.name) for spec in specs}
    return _positions("input", "argument", specs, len(names))


def _map_outputs(returns: torch.JitType, specs: Sequence[TensorSpec]) -> _Outputs:
    kind = returns.kind()
    if kind == "TensorType":
        if len(specs) != 1:
            raise RepositoryError(
                f"the model's forward returns one Tensor; the configuration declares "
                f"{len(specs)} outputs ({', '.join(s.name for s in specs)})"
            )
        return _Outputs(kind, {})
    if kind == "DictType" and str(returns) == "Dict[str, Tensor]":
        return _Outputs(kind, {})
    if kind == "ListType" and str(returns) == "List[Tensor]":
        return _Outputs(kind, _positions("output", "returned element", specs, None))
    if kind == "TupleType":
        elements = cast("torch.TupleType", returns).elements()
        index = _positions("output", "returned element", specs, len(elements))
        for name, position in index.items():
            if elements[position].kind() != "TensorType":
                raise RepositoryError(
                    f"output '{name}' names forward's returned element {position}, which "
                    f"is {elements[position]}, not a Tensor"
                )
        return _Outputs(kind, index)
    raise RepositoryError(
        f"the model's forward returns {returns}; served are a Tensor, a tuple or "
        "List[Tensor], or Dict[str, Tensor]"
    )


def _to_tensor(spec: TensorSpec, array: np.ndarray | None, device: torch.device) -> torch.Tensor:
    if array is None:
        raise InvalidInput(f"missing input '{spec.name}'")
    numpy_dtype, dtype = _TYPES[spec.datatype]
    if array.dtype != numpy_dtype:
        raise InvalidInput(
            f"input '{spec.name}' must be {spec.datatype} ({numpy_dtype}), got {array.dtype}"
        )
    if not spec.accepts_shape(array.shape):
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(array.shape)}, expected {list(spec.shape)} "
            "(-1 is any size)"
        )
    array = np.ascontiguousarray(array)
    # The codec hands out read-only views of the request bytes (np.frombuffer), which
    # torch.from_numpy warns about; the module may write to its inputs, so copy those.
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device=device, dtype=dtype)


def _to_numpy(spec: TensorSpec, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise RepositoryError(
            f"output '{spec.name}' is a {type(value).__name__} from the model, not a Tensor"
        )
    dtype = _TYPES[spec.datatype][1]
    if value.dtype != dtype:
        raise RepositoryError(
            f"output '{spec.name}' is declared {spec.datatype}, but the model returns "
            f"{str(value.dtype).removeprefix('torch.')}"
        )
    if not spec.accepts_shape(tuple(value.shape)):
        raise RepositoryError(
            f"output '{spec.name}' is declared {list(spec.shape)}, but the model returns "
            f"shape {list(value.shape)} (-1 is any size)"
        )
    value = value.detach().cpu()
    # NumPy has no bfloat16: BF16 goes back widened, as it came in.
    array: np.ndarray = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return array
