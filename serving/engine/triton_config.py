"""Triton's `<repository>/<model>/config.pbtxt`, read as Triton reads it: protobuf text format
with Triton's field names into `inference.ModelConfig` (proto/inference.proto holds the
fields below at Triton's own numbers), checked, and turned into the engine's `ModelConfig`.

Honoured:

    name                   must be the model's directory (or left out)
    platform, backend      which service serves the model (serving.engine.layout): this one's
                           (`Backend.triton_platform`) or onnxruntime_onnx, which every service
                           serves; another twinserve service's: skipped here; any other: refused
    default_model_filename the file (or SavedModel directory) each user version holds
    runtime                twinserve's default runtime, as config.json's "runtime" (Triton's
                           field 25, which the ModelConfig RPC already answers with)
    version_policy         latest { num_versions } / all {} / specific { versions }
    max_batch_size         the rows a request may have; with dynamic_batching the largest batch
    dynamic_batching       preferred_batch_size, max_queue_delay_microseconds,
                           default_queue_policy { max_queue_size }
    input, output          name, data_type, dims (input.format FORMAT_NHWC/NCHW: 3 dims,
                           as in Triton; output.label_filename: a file in the model's
                           directory, kept for the classification extension, which is
                           refused per request; reshape: a user's file gets (and gives)
                           tensors of that shape, clients send and get dims);
                           our own versions' signatures must match them
                           exactly; a user's model file is served by them (and checked against
                           what the file declares); with max_batch_size > 0 the dims leave out
                           the batch dimension (Triton's meaning). Left out: auto-completed
                           from the file (a SavedModel's signature, an ONNX graph), or ours.
    instance_group         kind and gpus checked against the service's device (KIND_GPU on a
                           CPU service, KIND_CPU on a GPU one, other GPUs: that model fails)
    parameters             returned by the ModelConfig RPC (twinserve's own keys are refused)

Logged, not honoured: `instance_group.count` (one instance serves each version; concurrency is
the service's setting). Refused when set, because nothing here acts on them yet:
`input.optional`, `is_shape_tensor`, `allow_ragged_batch`, and dynamic_batching's
`preserve_ordering`, priorities and queue timeouts. Every other Triton field (optimization,
sequence_batching, ensemble_scheduling, model_warmup, ...) is not in the schema, so text format
refuses it as an unknown field. Nothing is ignored silently.

Every refusal is a RepositoryError naming the file: `<model>/config.pbtxt:LINE:COLUMN: ...` for
what the parser refuses, `<model>/config.pbtxt: <field> ...` for the checks after it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from serving.backend import Backend
from serving.engine.model_config import InstanceGroup, ModelConfig
from serving.errors import RepositoryError
from serving.pb import inference_pb2 as pb
from serving.protocol.names import (
    CONFIG_ARCHITECTURE_PARAM,
    CONFIG_RUNTIMES_PARAM,
    FRAMEWORK_PARAM,
)
from serving.types import Signature, TensorSpec

__all__ = ["CONFIG_PBTXT", "check_service", "check_signature", "read_pbtxt"]

logger = logging.getLogger(__name__)

CONFIG_PBTXT = "config.pbtxt"

# Triton's TYPE_X -> the protocol's datatype (TYPE_STRING is BYTES).
_DATATYPES = {
    value: "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")
    for name, value in pb.DataType.items()
    if value != pb.TYPE_INVALID
}
# Per message, the fields acted on; any other one that is set is refused (a field added to
# the schema is refused until it is honoured here).
_TOP = {
    *("name", "platform", "backend", "runtime", "version_policy", "max_batch_size"),
    *("input", "output", "dynamic_batching", "instance_group", "parameters"),
    "default_model_filename",
}
# A file name inside the version directory: no path, nothing hidden.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_BATCHING = {"preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy"}
_INPUT = {"name", "data_type", "dims", "format", "reshape"}
_OUTPUT = {"name", "data_type", "dims", "reshape", "label_filename"}
_OURS = {CONFIG_ARCHITECTURE_PARAM, CONFIG_RUNTIMES_PARAM, FRAMEWORK_PARAM}


def read_pbtxt(path: Path, model: str) -> ModelConfig:
    """`model`'s config.pbtxt at `path`; RepositoryError naming the file, line and field."""
    source = f"{model}/{CONFIG_PBTXT}"
    message = pb.ModelConfig()
    try:
        text_format.Parse(path.read_text(), message)
    except text_format.ParseError as exc:
        # Its text starts "LINE:COLUMN : " where it knows them.
        where, _, what = str(exc).partition(" : ")
        detail = f"{where}: {what}" if what else f" {where}"
        raise RepositoryError(f"{source}:{detail}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{source} could not be read") from exc
    try:
        return _convert(message, model, source)
    except (ValueError, TypeError) as exc:
        raise RepositoryError(f"{source}: {exc}") from exc


def _refuse_unsupported(message: Message, honoured: set[str], where: str) -> None:
    for field, _ in message.ListFields():
        if field.name not in honoured:
            raise ValueError(f"{where}{field.name} is not supported yet (remove it)")


def _convert(message: pb.ModelConfig, model: str, source: str) -> ModelConfig:
    _refuse_unsupported(message, _TOP, "")
    if message.name and message.name != model:
        raise ValueError(f"name '{message.name}' is not the model's directory '{model}'")
    raw: dict[str, Any] = {"max_batch_size": message.max_batch_size}
    if message.runtime:
        raw["runtime"] = message.runtime
    if message.HasField("version_policy"):
        raw["version_policy"] = _policy(message.version_policy)
    if message.HasField("dynamic_batching"):
        raw["dynamic_batching"] = _batching(message.dynamic_batching)
    filename = message.default_model_filename
    if filename and not _FILE_NAME.match(filename):
        raise ValueError(
            f"default_model_filename '{filename}' must be a file name in the version "
            "directory (letters, digits, '_', '.', '-'; no path)"
        )
    parameters = tuple(sorted((k, v.string_value) for k, v in message.parameters.items()))
    for key, _ in parameters:
        if key in _OURS:
            raise ValueError(f"parameters '{key}' is twinserve's own (the service sets it)")
    shapes: dict[str, tuple[int, ...]] = {}
    inputs = _tensors(message.input, "input", shapes)
    outputs = _tensors(message.output, "output", shapes)
    labels = tuple((o.name, o.label_filename) for o in message.output if o.label_filename)
    for name, label_file in labels:
        if not _FILE_NAME.match(label_file):
            raise ValueError(f"output '{name}' label_filename '{label_file}' must be a file name")
    return replace(
        ModelConfig.from_mapping(raw),
        source=source,
        platform=message.platform,
        backend=message.backend,
        inputs=inputs,
        outputs=outputs,
        reshapes=tuple(sorted(shapes.items())),
        labels=labels,
        instance_groups=tuple(_group(g, i) for i, g in enumerate(message.instance_group)),
        parameters=parameters,
        model_filename=filename,
    )


def _policy(policy: pb.ModelVersionPolicy) -> dict[str, Any]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest":
        return {"latest": {"num_versions": policy.latest.num_versions}}
    if choice == "specific":
        return {"specific": {"versions": list(policy.specific.versions)}}
    if choice == "all":
        return {"all": {}}
    raise ValueError("version_policy must set one of latest, all, specific")


def _batching(batching: pb.ModelDynamicBatching) -> dict[str, Any]:
    _refuse_unsupported(batching, _BATCHING, "dynamic_batching.")
    queue = batching.default_queue_policy
    _refuse_unsupported(queue, {"max_queue_size"}, "dynamic_batching.default_queue_policy.")
    return {
        "preferred_batch_size": list(batching.preferred_batch_size),
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "default_queue_policy": {"max_queue_size": queue.max_queue_size},
    }


def _tensors(
    declared: Iterable[pb.ModelInput | pb.ModelOutput],
    kind: str,
    shapes: dict[str, tuple[int, ...]],
) -> tuple[TensorSpec, ...] | None:
    """The declared tensors; each `reshape` goes into `shapes` (name -> the model's shape)."""
    specs: list[TensorSpec] = []
    for index, tensor in enumerate(declared):
        where = f"{kind}[{index}]"
        _refuse_unsupported(tensor, _INPUT if kind == "input" else _OUTPUT, f"{where}.")
        if not tensor.name:
            raise ValueError(f"{where}.name is missing")
        if any(spec.name == tensor.name for spec in specs):
            raise ValueError(f"{where}.name '{tensor.name}' is declared twice")
        datatype = _DATATYPES.get(tensor.data_type)
        if datatype is None:
            raise ValueError(f"{where}.data_type must be a TYPE_ other than TYPE_INVALID")
        if any(dim < -1 for dim in tensor.dims):
            raise ValueError(f"{where}.dims {list(tensor.dims)}: a dim is -1 or a size")
        dims = tuple(tensor.dims)
        if isinstance(tensor, pb.ModelInput) and tensor.format and len(dims) != 3:
            # Triton's rule: an image format names the 3 non-batch dimensions.
            raise ValueError(
                f"{where}.format {pb.ModelInput.Format.Name(tensor.format)} needs 3 dims "
                f"(CHW or HWC, the batch left out), got {list(dims)}"
            )
        if tensor.HasField("reshape"):
            shapes[tensor.name] = _reshape(tuple(tensor.reshape.shape), dims, where)
        specs.append(TensorSpec(tensor.name, datatype, dims))
    return tuple(specs) or None


def _reshape(shape: tuple[int, ...], dims: tuple[int, ...], where: str) -> tuple[int, ...]:
    """Triton's reshape: the model's shape for a tensor whose clients send `dims`; the same
    number of elements (one -1 on each side stands for the same count)."""
    if any(dim < -1 for dim in shape) or shape.count(-1) > 1 or dims.count(-1) > 1:
        raise ValueError(f"{where}.reshape {list(shape)}: sizes, and at most one -1 each side")
    if (-1 in shape) != (-1 in dims) or math.prod(d for d in shape if d != -1) != math.prod(
        d for d in dims if d != -1
    ):
        raise ValueError(
            f"{where}.reshape {list(shape)} does not hold the elements of dims {list(dims)}"
        )
    return shape


def _group(group: pb.ModelInstanceGroup, index: int) -> InstanceGroup:
    where = f"instance_group[{index}]"
    if group.kind not in pb.ModelInstanceGroup.Kind.values():
        raise ValueError(f"{where}.kind {group.kind} is not a Triton instance kind")
    if group.count < 0 or any(gpu < 0 for gpu in group.gpus):
        raise ValueError(f"{where}: count and gpus cannot be negative")
    kind = pb.ModelInstanceGroup.Kind.Name(group.kind)
    return InstanceGroup(kind, group.count, tuple(group.gpus))


def check_service(config: ModelConfig, backend: Backend) -> None:
    """RepositoryError if the configuration asks for another device than the service's (the
    platform is checked by `serving.engine.layout`)."""
    device = backend.device
    on_gpu = device.startswith("cuda")
    for index, group in enumerate(config.instance_groups):
        where = f"{config.source}: instance_group[{index}]"
        if group.kind == "KIND_GPU" and not on_gpu:
            raise RepositoryError(f"{where}.kind KIND_GPU, but this service runs on the CPU")
        if group.kind == "KIND_CPU" and on_gpu:
            raise RepositoryError(f"{where}.kind KIND_CPU, but this service runs on '{device}'")
        index_here = int(device.partition(":")[2] or 0) if on_gpu else None
        if group.gpus and set(group.gpus) != {index_here}:
            raise RepositoryError(
                f"{where}.gpus {list(group.gpus)}, but this service runs on '{device}'"
            )
        if group.count > 1:
            logger.warning(
                "%s.count %d is not honoured: one instance serves each version "
                "(concurrency is the service's setting)",
                where,
                group.count,
            )


def check_signature(config: ModelConfig, signature: Signature, version: int) -> None:
    """RepositoryError if the declared inputs or outputs are not the version's own."""
    batched = config.max_batch_size > 0
    for kind, declared, actual in (
        ("input", config.inputs, signature.inputs),
        ("output", config.outputs, signature.outputs),
    ):
        if declared is None:
            continue
        where = f"{config.source}: {kind}"
        names = sorted(spec.name for spec in actual)
        if sorted(spec.name for spec in declared) != names:
            raise RepositoryError(
                f"{where} names {sorted(s.name for s in declared)}, but version {version} "
                f"has {names}"
            )
        for spec in declared:
            real = next(s for s in actual if s.name == spec.name)
            if spec.datatype != real.datatype:
                raise RepositoryError(
                    f"{where} '{spec.name}' data_type {spec.datatype}, but version "
                    f"{version} takes {real.datatype}"
                )
            shape = real.shape
            if batched and (not shape or shape[0] != -1):
                raise RepositoryError(
                    f"{where} '{spec.name}': max_batch_size > 0, but version {version} has "
                    f"no batch dimension (shape {list(shape)})"
                )
            if (shape[1:] if batched else shape) != spec.shape:
                note = " (with max_batch_size > 0, dims leave out the batch dimension)"
                raise RepositoryError(
                    f"{where} '{spec.name}' dims {list(spec.shape)}, but version {version} "
                    f"has shape {list(shape)}{note if batched else ''}"
                )
