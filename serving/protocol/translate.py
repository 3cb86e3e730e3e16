"""Protobuf <-> core types for ModelInfer: the only place that knows both shapes."""

from __future__ import annotations

from collections.abc import Mapping

from serving.errors import InvalidInput, Unsupported
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import (
    check_inputs,
    encode_tensor,
    param_from_pb,
    param_to_pb,
    typed_allowed,
)
from serving.protocol.names import (
    BINARY_OUTPUT_PARAM,
    BINARY_PARAM,
    CLASSIFICATION_PARAM,
    SHARED_MEMORY_REGION_PARAM,
)
from serving.types import InferRequest, InferResponse, ParamValue, RequestedOutput, Signature

__all__ = ["MAX_PARAMETERS", "request_from_pb", "response_to_pb"]

# Triton extensions this server does not implement (nor advertise). tritonclient sends them
# as tensor parameters; ignoring them would answer something other than what was asked
# (FP32 values instead of class labels, data inline instead of in a shared memory region).
_UNSUPPORTED_TENSOR_PARAMS = {
    CLASSIFICATION_PARAM: "classification",
    SHARED_MEMORY_REGION_PARAM: "shared memory",
}
# Parameters read from one map (the request's, a tensor's): Triton's clients send a handful; a
# 4 MiB map of 300,000 held the event loop for a second.
MAX_PARAMETERS = 64


def _params(
    params: Mapping[str, pb.InferParameter], where: str = "the request"
) -> dict[str, ParamValue]:
    if len(params) > MAX_PARAMETERS:
        raise InvalidInput(
            f"{where} carries {len(params)} parameters; at most {MAX_PARAMETERS} are accepted"
        )
    return {key: param_from_pb(value) for key, value in params.items()}


def _flag(params: dict[str, ParamValue], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{key}' must be a bool, got {type(value).__name__}")
    return value


def _refuse_extensions(kind: str, name: str, params: Mapping[str, pb.InferParameter]) -> None:
    for key, feature in _UNSUPPORTED_TENSOR_PARAMS.items():
        if key in params:
            raise Unsupported(
                f"{kind} '{name}' asks for {feature} (parameter '{key}'), which this server "
                "does not support"
            )


def _check_counts(request: pb.ModelInferRequest, signature: Signature) -> None:
    """More inputs or outputs than the model has are refused before any is read: a 7 MiB
    request of 300,000 inputs took 13 s of the event loop to read one by one."""
    for kind, asked, declared in (
        ("inputs", len(request.inputs), signature.inputs),
        ("outputs", len(request.outputs), signature.outputs),
    ):
        if asked > len(declared):
            names = ", ".join(spec.name for spec in declared)
            raise InvalidInput(
                f"the request names {asked} {kind}; model '{request.model_name}' has "
                f"{len(declared)} ({names})"
            )


def request_from_pb(
    request: pb.ModelInferRequest,
    *,
    max_tensor_bytes: int | None = None,
    signature: Signature | None = None,
) -> InferRequest:
    """The request with its inputs checked against their contents; with `signature` (the
    model's, as far as known), first that it has no more inputs and outputs than the model."""
    if signature is not None:
        _check_counts(request, signature)
    for tensor in request.inputs:
        if tensor.parameters:  # the common case, and a map lookup costs more than a length
            if len(tensor.parameters) > MAX_PARAMETERS:
                _params(tensor.parameters, f"input '{tensor.name}'")
            _refuse_extensions("input", tensor.name, tensor.parameters)
    params = _params(request.parameters)
    binary_output = _flag(params, BINARY_OUTPUT_PARAM, True)
    outputs: list[RequestedOutput] = []
    for wanted in request.outputs:
        if wanted.parameters:
            _refuse_extensions("output", wanted.name, wanted.parameters)
        out_params = _params(wanted.parameters, f"output '{wanted.name}'")
        outputs.append(RequestedOutput(wanted.name, _flag(out_params, BINARY_PARAM, binary_output)))
    if len({o.name for o in outputs}) != len(outputs):
        raise InvalidInput("an output is requested more than once")
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        # Checked against their contents here, decoded by the data plane once it has checked
        # them against the model.
        inputs=check_inputs(request, max_tensor_bytes=max_tensor_bytes),
        id=request.id,
        parameters=params,
        outputs=outputs,
        binary_output=binary_output,
    )


def response_to_pb(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for key, value in response.parameters.items():
        param_to_pb(value, message.parameters[key])
    # A response is all raw or all typed: raw_output_contents is indexed by output position,
    # so mixing the two would misalign what clients read.
    binary = any(response.binary.values()) or not all(
        typed_allowed(dt) for dt in response.datatypes.values()
    )
    for name, array in response.outputs.items():
        tensor = message.outputs.add(name=name)
        raw = encode_tensor(tensor, array, response.datatypes[name], binary=binary)
        if raw is not None:
            message.raw_output_contents.append(raw)
    return message
