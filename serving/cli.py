"""`twinserve predict`: one prediction through the gateway (or any OIP endpoint).

twinserve predict 1800 --framework pytorch
twinserve predict 1200 1800 2400 --url localhost:8001 --model house_price
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
import numpy as np

from serving.codec import decode_tensor
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc

__all__ = ["main"]


def predict(
    url: str, model: str, values: list[float], framework: str | None, timeout: float
) -> tuple[pb.ModelInferResponse, np.ndarray]:
    metadata = (("x-framework", framework),) if framework else None
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model), timeout=timeout, metadata=metadata
        )
        spec = meta.inputs[0]
        request = pb.ModelInferRequest(model_name=model)
        data = np.asarray(values, dtype=np.float32).reshape(-1, 1)
        request.inputs.add(name=spec.name, datatype="FP32", shape=data.shape)
        request.raw_input_contents.append(data.tobytes())
        if framework:
            request.parameters["framework"].string_param = framework
        response = stub.ModelInfer(request, timeout=timeout)
    output = response.outputs[0]
    result = decode_tensor(
        output.name, output.datatype, output.shape, response.raw_output_contents[0]
    )
    return response, result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="twinserve")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="predict through the gateway")
    p.add_argument("values", nargs="+", type=float, help="input values (house sizes in sq ft)")
    p.add_argument("--url", default="localhost:8001")
    p.add_argument("--model", default="house_price")
    p.add_argument("--framework", choices=("tensorflow", "pytorch"))
    p.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        response, result = predict(args.url, args.model, args.values, args.framework, args.timeout)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        sys.exit(1)
    served_by = response.parameters["framework"].string_param or "?"
    for value, answer in zip(args.values, result.ravel(), strict=True):
        print(
            f"{response.model_name} v{response.model_version} ({served_by}): "
            f"{value:g} -> {answer:.2f}"
        )


if __name__ == "__main__":
    main()
