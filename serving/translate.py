"""Protobuf <-> core types for ModelInfer: the only place that knows both shapes."""

from __future__ import annotations

from collections.abc import Mapping

from serving.codec import check_inputs, encode_tensor, param_from_pb, param_to_pb, typed_allowed
from serving.errors import InvalidInput, Unsupported
from serving.pb import inference_pb2 as pb
from serving.types import InferRequest, InferResponse, ParamValue, RequestedOutput

__all__ = ["request_from_pb", "response_to_pb"]

# Triton's names for asking for binary (raw) or JSON-like typed outputs.
BINARY_OUTPUT_PARAM = "binary_data_output"
BINARY_PARAM = "binary_data"
# Triton extensions this server does not implement (nor advertise). tritonclient sends them
# as tensor parameters; ignoring them would answer something other than what was asked
# (FP32 values instead of class labels, data inline instead of in a shared memory region).
_UNSUPPORTED_TENSOR_PARAMS = {
    "classification": "classification",
    "shared_memory_region": "shared memory",
}


def _params(params: dict[str, pb.InferParameter]) -> dict[str, ParamValue]:
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


def request_from_pb(
    request: pb.ModelInferRequest, *, max_tensor_bytes: int | None = None
) -> InferRequest:
    for tensor in request.inputs:
        if tensor.parameters:  # the common case, and a map lookup costs more than a length
            _refuse_extensions("input", tensor.name, tensor.parameters)
    params = _params(dict(request.parameters))
    binary_output = _flag(params, BINARY_OUTPUT_PARAM, True)
    outputs: list[RequestedOutput] = []
    for wanted in request.outputs:
        if wanted.parameters:
            _refuse_extensions("output", wanted.name, wanted.parameters)
        out_params = _params(dict(wanted.parameters))
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
