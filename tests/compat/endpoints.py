"""Where the suite sends calls: each framework service directly, and the gateway asked for
each framework. `raw_infer` sends messages built with tritonclient's own generated protobuf
code, for what tritonclient itself cannot produce."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

CALL_TIMEOUT_S = 10.0
ENDPOINT_IDS = ("tensorflow", "pytorch", "onnx", "gateway-tf", "gateway-torch", "gateway-onnx")


@dataclass(frozen=True)
class Endpoint:
    """One way to reach a framework: a service directly, or the gateway asked for it."""

    id: str
    address: str
    framework: str  # the framework that must answer
    headers: dict[str, str] | None  # gRPC metadata that picks it at the gateway

    @property
    def via_gateway(self) -> bool:
        return self.headers is not None


@dataclass(frozen=True)
class Stack:
    tensorflow: str
    pytorch: str
    onnx: str  # the ONNX Runtime service, over the PyTorch repository's exports
    gateway: str

    def endpoint(self, endpoint_id: str) -> Endpoint:
        return {
            "tensorflow": Endpoint("tensorflow", self.tensorflow, "tensorflow", None),
            "pytorch": Endpoint("pytorch", self.pytorch, "pytorch", None),
            "onnx": Endpoint("onnx", self.onnx, "onnx", None),
            "gateway-tf": Endpoint(
                "gateway-tf", self.gateway, "tensorflow", {"x-framework": "tensorflow"}
            ),
            "gateway-torch": Endpoint(
                "gateway-torch", self.gateway, "pytorch", {"x-framework": "pytorch"}
            ),
            "gateway-onnx": Endpoint("gateway-onnx", self.gateway, "onnx", {"x-framework": "onnx"}),
        }[endpoint_id]


def metadata(endpoint: Endpoint) -> tuple[tuple[str, str], ...]:
    return tuple((endpoint.headers or {}).items())


def raw_infer(
    endpoint: Endpoint, request: service_pb2.ModelInferRequest
) -> service_pb2.ModelInferResponse:
    """ModelInfer over a plain channel; errors raise `grpc.RpcError`."""
    with grpc.insecure_channel(endpoint.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response: service_pb2.ModelInferResponse = stub.ModelInfer(
            request, metadata=metadata(endpoint), timeout=CALL_TIMEOUT_S
        )
        return response
