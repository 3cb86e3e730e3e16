"""The floor: a bare grpc.aio server answering ModelInfer with a canned 360, no model, no
validation. Launched like the services (`serve --port P --port-file F`) for side-by-side runs."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving.pb import inference_pb2 as pb
from serving.rpc.server import SERVICE_NAME, wait_for_signal

_ANSWER = pb.ModelInferResponse(model_name="house_price", model_version="1")
_ANSWER.outputs.add(name="price_k", datatype="FP32", shape=[1, 1])
_ANSWER.raw_output_contents.append(np.array([[360.0]], np.float32).tobytes())


async def _infer(
    request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> pb.ModelInferResponse:
    return _ANSWER


async def _serve(port: int, port_file: Path) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ModelInfer": handler}),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    port_file.write_text(f"{bound}\n")
    await wait_for_signal()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_server")
    parser.add_argument("command", choices=("serve",))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.port_file))


if __name__ == "__main__":
    main()
