"""The load-test matrix end to end against the real services: a TensorFlow and a PyTorch
service (separate processes, each with its own seed `house_price`) and a gateway in front.
The stub of test_loadtest_matrix.py answers every cell alike; here each cell must reach the
framework and runtime it names (the matrix checks who answered) and the services' own
statistics must show each framework's cells landed on that framework's service."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from devtools.stack import Process, launch
from loadtest.cli import main
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.framework

MODULES = {"tensorflow": "tf_service", "pytorch": "torch_service"}
# The ONNX Runtime service serves the PyTorch repository's exports.
SERVED = {name: (module, name) for name, module in MODULES.items()}
SERVED["onnx"] = ("onnx_service", "pytorch")


@dataclass
class Stack:
    direct: dict[str, str]  # framework -> address
    gateway: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("loadtest-e2e")
    env = {"TWINSERVE_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started: list[Process] = []
    try:
        seeds = [
            subprocess.Popen(
                [sys.executable, "-m", module, "seed", "--model-repository", str(root / name)]
            )
            for name, module in MODULES.items()
        ]
        assert [seed.wait(300) for seed in seeds] == [0, 0]
        for name, (module, repository) in SERVED.items():
            args = ["--model-repository", str(root / repository)]
            started.append(launch(name, module, args, env=env))
        direct = {p.name: p.address for p in started}
        gateway_env = {
            "TWINSERVE_GATEWAY_FRAMEWORKS": json.dumps(direct),
            "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
        }
        started.append(launch("gateway", "gateway", env=gateway_env))
        yield Stack(direct, started[-1].address)
    finally:
        for process in reversed(started):
            process.stop()


def _served(address: str) -> int:
    """Successful house_price requests the service at `address` has answered so far."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(name="house_price"), timeout=10)
    return sum(s.inference_stats.success.count for s in response.model_stats)


def test_each_cell_reaches_the_framework_and_runtime_it_names(stack: Stack, tmp_path: Path) -> None:
    before = {name: _served(address) for name, address in stack.direct.items()}
    args = ["--gateway", stack.gateway, "--concurrency", "1", "--duration", "0.3"]
    args += ["--warmup", "0", "--clients", "1", "--out", str(tmp_path)]
    args += [f"--service={name}={address}" for name, address in stack.direct.items()]
    main(args)

    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    # Both training frameworks x three runtimes and onnx's one x (direct, gateway), each
    # checked on its first answer (1800 -> 360, from the framework and runtime it names) and
    # on every answer of its run (360 within 1).
    assert len(cells) == 14
    for cell in cells:
        assert cell["status"] == "ok", cell
        result = cell["result"]
        assert result["ok"] > 0 and not result["errors"] and not result["wrong_answers"], cell
    # Every cell's calls (its check call and the run's) reached its framework's service.
    for name, address in stack.direct.items():
        mine = [c for c in cells if c["framework"] == name]
        sent = sum(1 + c["result"]["ok"] for c in mine)
        gained = _served(address) - before[name]
        # A call or so per cell may still have been in flight when its window closed.
        assert sent <= gained <= sent + 2 * len(mine), (name, sent, gained)


@pytest.mark.parametrize("framework", list(SERVED))
def test_the_seed_answers_360_through_both_paths(stack: Stack, framework: str) -> None:
    request = pb.ModelInferRequest(model_name="house_price")
    request.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1800.0]], np.float32).tobytes())
    via_gateway = pb.ModelInferRequest()
    via_gateway.CopyFrom(request)
    via_gateway.parameters["framework"].string_param = framework
    for address, message in ((stack.direct[framework], request), (stack.gateway, via_gateway)):
        with grpc.insecure_channel(address) as channel:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
        assert response.parameters["framework"].string_param == framework
        assert response.parameters["runtime"].string_param == "native"
        value = np.frombuffer(response.raw_output_contents[0], np.float32)
        assert value.tolist() == pytest.approx([360.0], abs=1.0)
