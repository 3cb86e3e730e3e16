"""A tiny ModelInfer server whose behaviour is chosen by the request's model name, so one
server per test module serves every case (each model name keeps its own call counter):

- `ok...`: answers price_k 360.
- `stall-N...`: the N-th call sleeps 1 s holding a lock that every call takes, so the
  whole server stalls for a second, as a stop-the-world pause would.
- `fail...`: of every 10 calls, #0 RESOURCE_EXHAUSTED, #1 and #2 UNAVAILABLE, the rest 360.
- `wrong...`: every 50th call answers 361.5.

    python -m tests.loadtest.stub_server serve --port 0 --port-file F   (as devtools.stack launches)
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving.pb import inference_pb2 as pb

STALL_S = 1.0
_lock = threading.Lock()
_calls: Counter[str] = Counter()


def _answer(value: float) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="stub")
    response.outputs.add(name="price_k", datatype="FP32", shape=[1, 1])
    response.raw_output_contents.append(np.array([[value]], np.float32).tobytes())
    return response


_RIGHT, _WRONG = _answer(360.0), _answer(361.5)


def _infer(request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:
    name = request.model_name
    with _lock:
        index = _calls[name]
        _calls[name] += 1
        if name.startswith("stall-") and index + 1 == int(name.split("-")[1]):
            time.sleep(STALL_S)  # under the lock: every other call waits too
    if name.startswith("fail"):
        if index % 10 == 0:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if index % 10 in (1, 2):
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend away")
    if name.startswith("wrong") and index % 50 == 49:
        return _WRONG
    return _RIGHT


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("serve",))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    handler = grpc.unary_unary_rpc_method_handler(
        _infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService", {"ModelInfer": handler}
            ),
        )
    )
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    args.port_file.write_text(f"{port}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
