"""Worker processes: `TWINSERVE_WORKERS=2` serves one port from two real PyTorch service
processes; a killed worker is started again; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.datasets import HOUSE_PRICE_INPUT
from serving.training.seed import SEED_MODEL
from tests.integration.oip import eventually

pytestmark = pytest.mark.framework

Stub = pb_grpc.GRPCInferenceServiceStub
ENV = {
    "TWINSERVE_LOG_LEVEL": "WARNING",
    "TWINSERVE_REPOSITORY_POLL_S": "0",
    "TWINSERVE_WORKERS": "2",
}


def _request(size: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=SEED_MODEL)
    request.inputs.add(name=HOUSE_PRICE_INPUT, datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[size]], dtype=np.float32).tobytes())
    return request


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def _price_and_count(address: str) -> tuple[float, int]:
    """One prediction on a new connection, then that worker's request count."""
    with grpc.insecure_channel(address) as channel:
        stub = Stub(channel)
        response = stub.ModelInfer(_request(1800), timeout=10)
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    price = float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])
    return price, statistics.model_stats[0].inference_stats.success.count


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    path = tmp_path_factory.mktemp("workers") / "pytorch"
    command = [sys.executable, "-m", "torch_service", "seed", "--model-repository", str(path)]
    subprocess.run(command, check=True, env={**os.environ, **ENV}, timeout=120)
    process = launch("pytorch", "torch_service", ["--model-repository", str(path)], env=ENV)
    try:
        yield process
    finally:
        process.stop()


def test_two_workers_share_the_port(service: Process) -> None:
    assert len(_children(service.popen.pid)) == 2
    answers = [_price_and_count(service.address) for _ in range(24)]
    assert all(abs(price - 360.0) <= 1.0 for price, _ in answers)
    # One process would count 1, 2, ..., 24; two count separately, so the highest count any
    # connection saw is below 24 (all 24 new connections on one worker: a 1 in 2**23 chance).
    assert max(count for _, count in answers) < 24


def test_a_killed_worker_is_started_again(service: Process) -> None:
    before = _children(service.popen.pid)
    os.kill(before[0], signal.SIGKILL)
    assert eventually(lambda: len(set(_children(service.popen.pid)) - {before[0]}) == 2, timeout=60)
    # Every new connection is answered again, whichever worker takes it (the restarted one
    # listens once its models are loaded).
    assert eventually(
        lambda: all(abs(_price_and_count(service.address)[0] - 360) <= 1 for _ in range(8)),
        timeout=60,
    )


def test_sigterm_stops_every_worker(service: Process) -> None:
    workers = _children(service.popen.pid)
    assert service.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
