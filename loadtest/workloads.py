"""The models the matrix loads, the request each cell sends, and training the models that are
missing (over gRPC, so it works against remote endpoints too)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import numpy as np

from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM, RUNTIME_PARAM

__all__ = ["MODELS", "ModelSpec", "Workload", "ensure_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as served
    architecture: str
    dataset: str  # the built-in training dataset
    input_name: str
    output_name: str


MODELS = {
    "house_price": ModelSpec("house_price", "linear", "house_price", "size_sqft", "price_k"),
    "mlp": ModelSpec("loadtest_mlp", "mlp", "house_features", "features", "price_k"),
    "cnn": ModelSpec("loadtest_cnn", "cnn", "digits", "image", "probabilities"),
}


def _inputs(model: str, batch: int) -> np.ndarray:
    if model == "house_price":
        return np.full((batch, 1), 1800.0, np.float32)
    # Imported here: only these models need them (and digits needs scikit-learn).
    from serving.training.datasets import digits, house_features  # noqa: PLC0415

    if model == "mlp":
        return house_features(batch, seed=1)[0]
    images = digits()[0]
    return np.resize(images, (batch, *images.shape[1:])).astype(np.float32)


@dataclass(frozen=True)
class Workload:
    model: str  # a key of MODELS, or a model already served (loadtest.served)
    batch: int

    @property
    def spec(self) -> ModelSpec:
        return MODELS[self.model]

    @property
    def known_answer(self) -> tuple[np.ndarray, float] | None:
        """(expected output, tolerance) where the answer is known in advance; else the
        native runtime's answer is the reference."""
        if self.model == "house_price":  # price = 0.2 x size
            return np.full((self.batch, 1), 360.0, np.float32), 1.0
        return None

    def request(self, framework: str | None, runtime: str) -> bytes:
        """The serialized ModelInferRequest, built once per target: raw contents, as Triton's
        clients send them."""
        x = _inputs(self.model, self.batch)
        request = pb.ModelInferRequest(model_name=self.spec.name)
        request.inputs.add(name=self.spec.input_name, datatype="FP32", shape=x.shape)
        request.raw_input_contents.append(x.tobytes())
        if framework:
            request.parameters[FRAMEWORK_PARAM].string_param = framework
        if runtime:
            request.parameters[RUNTIME_PARAM].string_param = runtime
        return request.SerializeToString()


def ensure_loaded(
    spec: ModelSpec,
    framework: str,
    address: str,
    *,
    via_gateway: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> str:
    """Loads `spec` on a framework that does not train (it serves what another trained into
    its repository, which `ensure_model` filled first): now, rather than at its next poll."""
    metadata = (*metadata, (FRAMEWORK_HEADER, framework)) if via_gateway else metadata
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=spec.name), metadata=metadata, timeout=120
        )
    return f"{framework}: {spec.name} is loaded"


def ensure_model(
    spec: ModelSpec,
    framework: str,
    address: str,
    *,
    via_gateway: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> str:
    """Trains `spec` on `framework` behind `address` unless it is ready there; returns what
    was done, for the log. `metadata` goes with every call (a bearer token)."""
    metadata = (*metadata, (FRAMEWORK_HEADER, framework)) if via_gateway else metadata
    with grpc.insecure_channel(address) as channel:
        try:
            ready = pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                pb.ModelReadyRequest(name=spec.name), metadata=metadata, timeout=30
            )
            if ready.ready:
                return f"{framework}: {spec.name} is ready"
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
        request = tpb.TrainRequest(
            framework=framework, model_name=spec.name, architecture=spec.architecture
        )
        request.dataset.builtin = spec.dataset
        last = ""
        stub = tpb_grpc.TrainingServiceStub(channel)
        for event in stub.Train(request, metadata=metadata, timeout=900):
            kind = event.WhichOneof("event")
            if kind == "error":
                raise RuntimeError(f"training {spec.name} on {framework} failed: {event.error}")
            if kind == "finished":
                last = f"version {event.finished.version}"
        return f"{framework}: trained {spec.name} ({spec.architecture} on {spec.dataset}), {last}"
