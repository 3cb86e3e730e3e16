"""Models a service already serves (a user's, not one of `workloads.MODELS`): what each target
endpoint says the model takes, read before the matrix runs (ModelMetadata's inputs,
ModelConfig's max_batch_size), and the request for a batch size generated from it by the
generator `twinserve predict` uses (`devtools.inputs.generate`), so both send alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from devtools.inputs import generate, generated_shape, infer_request, specs
from loadtest.targets import Endpoints
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import DATATYPES
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM, RUNTIME_PARAM
from serving.types import TensorSpec

__all__ = ["SEED", "Served", "ServedModel", "describe", "notes", "read_served"]

# Every target of a model gets the same values at a batch size: the answers then compare.
SEED = 0


@dataclass(frozen=True)
class ServedModel:
    """What one target endpoint says a model takes: enough to make its requests."""

    name: str
    inputs: tuple[TensorSpec, ...]
    max_batch_size: int  # Triton's: > 0, the first dimension of every input is the batch

    def unavailable(self, batch: int) -> str | None:
        """Why `batch` cannot be sent, or None."""
        if self.max_batch_size > 0:
            if batch > self.max_batch_size:
                return f"batch {batch} is over the model's max_batch_size {self.max_batch_size}"
            return None
        if batch == 1 or any(spec.shape[:1] == (-1,) for spec in self.inputs):
            return None
        # Sending batch 1 under a bigger batch's row would measure another cell's load.
        return (
            f"batch {batch}: the model takes no batch dimension (max_batch_size 0 and no "
            "input whose first dimension is -1)"
        )

    def batched(self) -> tuple[TensorSpec, ...]:
        """The inputs with the batch dimension made variable, so the generator fills it:
        with max_batch_size > 0 it is the first one, which Triton's metadata already gives
        as -1; with 0 a leading -1 takes the batch, as `generate` does by itself."""
        if self.max_batch_size <= 0:
            return self.inputs
        return tuple(
            TensorSpec(spec.name, spec.datatype, (-1, *spec.shape[1:])) for spec in self.inputs
        )

    def shapes(self, batch: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(datatype, shape) of each input at `batch`, in order: two models with the same get
        the same generated values (they are drawn in order), whatever the inputs' names."""
        return tuple((spec.datatype, generated_shape(spec, batch)) for spec in self.batched())

    def request(self, batch: int, framework: str | None, runtime: str) -> bytes:
        """The serialized ModelInferRequest at `batch`: every input, raw contents, values
        drawn from SEED (floats in [0, 1), integers in [0, 10), booleans, short strings)."""
        arrays = generate(self.batched(), batch=batch, seed=SEED)
        request = infer_request(self.name, self.inputs, arrays)
        if framework:
            request.parameters[FRAMEWORK_PARAM].string_param = framework
        if runtime:
            request.parameters[RUNTIME_PARAM].string_param = runtime
        return request.SerializeToString()


# What each (framework, path) serves of a model, or why it serves nothing (the reason its
# cells give: NOT_FOUND's message where the framework does not have the model).
Served = dict[tuple[str, str], ServedModel | str]


def describe(
    model: str,
    framework: str,
    address: str,
    *,
    via_gateway: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> ServedModel:
    """What `framework` behind `address` serves as `model`; grpc.RpcError where it cannot
    say (NOT_FOUND: it does not serve it), ValueError for inputs no request can be made for."""
    metadata = (*metadata, (FRAMEWORK_HEADER, framework)) if via_gateway else metadata
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        inputs = specs(
            stub.ModelMetadata(pb.ModelMetadataRequest(name=model), metadata=metadata, timeout=30)
        )
        try:
            config = stub.ModelConfig(
                pb.ModelConfigRequest(name=model), metadata=metadata, timeout=30
            ).config
            max_batch_size = config.max_batch_size
        except grpc.RpcError as exc:
            # A server without ModelConfig: the metadata's shapes are all there is.
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            max_batch_size = 0
    unknown = [f"'{s.name}' ({s.datatype})" for s in inputs if s.datatype not in DATATYPES]
    if unknown:
        raise ValueError(f"input {', '.join(unknown)} has a datatype the protocol does not know")
    return ServedModel(model, tuple(inputs), max_batch_size)


def _summary(served: ServedModel | str) -> str:
    if isinstance(served, str):
        return f"not available ({served})"
    inputs = ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in served.inputs)
    return f"takes {inputs}; max_batch_size {served.max_batch_size}"


def notes(model: str, served: Served, endpoints: Endpoints) -> list[str]:
    """One line per framework for the log: what it serves as `model`, or why nothing, on the
    paths this run has (a path without an endpoint says so in its cells)."""
    lines = []
    for framework in dict.fromkeys(framework for framework, _ in served):
        said = {
            path: _summary(served[framework, path])
            for path, there in (
                ("direct", framework in endpoints.direct),
                ("gateway", endpoints.gateway is not None),
            )
            if there
        }
        if len(set(said.values())) == 1:
            lines.append(f"{framework}: {model} {next(iter(said.values()))}")
        elif said:
            paths = "; ".join(f"{path}: {line}" for path, line in said.items())
            lines.append(f"{framework}: {model}, {paths}")
    return lines


def read_served(model: str, frameworks: Iterable[str], endpoints: Endpoints) -> Served:
    """What every (framework, path) of the matrix serves as `model`, read once before its
    cells run: direct from the framework's service, and through the gateway (which may front
    other replicas) with the framework header."""
    served: Served = {}
    for framework in frameworks:
        for path, address in (
            ("direct", endpoints.direct.get(framework)),
            ("gateway", endpoints.gateway),
        ):
            if address is None:
                served[framework, path] = f"no {path} endpoint for {framework} was given"
                continue
            try:
                served[framework, path] = describe(
                    model,
                    framework,
                    address,
                    via_gateway=path == "gateway",
                    metadata=endpoints.metadata,
                )
            except grpc.RpcError as exc:
                served[framework, path] = f"{exc.code().name}: {exc.details()}"
            except ValueError as exc:
                served[framework, path] = str(exc)
    return served
