"""Peers for the serving benchmark: KServe's and MLServer's Python model servers answering the
house-price model over the same Open Inference Protocol gRPC, each run from a virtual
environment of its own (their pins clash with ours: protobuf, grpcio), passed as
`--kserve-python` / `--mlserver-python`:

    python3 -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve==0.21.0
    python3 -m venv /tmp/mlserver && /tmp/mlserver/bin/pip install mlserver==1.7.1

Each peer's model is the cheapest possible (0.2 x size in NumPy), so what is measured is the
server's own path, as the floor measures gRPC's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from devtools.stack import Process
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc

__all__ = ["PEERS", "start_peer"]

PEERS = ("kserve", "mlserver")
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(name: str, popen: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"exited with code {popen.returncode} before serving")
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name="house_price"), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    popen.kill()
    raise RuntimeError(f"not ready within {timeout:.0f}s")


def start_peer(name: str, python: str, timeout: float = 120.0) -> Process:
    """Starts peer `name` with the interpreter `python`; raises RuntimeError if it cannot."""
    if not Path(python).exists():
        raise RuntimeError(f"no Python at {python}")
    grpc_port, http_port, metrics_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    if name == "kserve":
        command = [
            python,
            str(HERE / "kserve_server.py"),
            f"--grpc_port={grpc_port}",
            f"--http_port={http_port}",
        ]
    elif name == "mlserver":
        folder = Path(tempfile.mkdtemp(prefix="peer-mlserver-"))
        settings = {
            "grpc_port": grpc_port,
            "http_port": http_port,
            "metrics_port": metrics_port,
            "parallel_workers": 0,  # its fastest setting for a model this cheap
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        model = {"name": "house_price", "implementation": "mlserver_model.HousePrice"}
        (folder / "model-settings.json").write_text(json.dumps(model))
        command = [str(Path(python).parent / "mlserver"), "start", str(folder)]
    else:
        raise RuntimeError(f"unknown peer '{name}'")
    popen = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(name, popen, grpc_port, timeout)
    return Process(name, popen, grpc_port)
