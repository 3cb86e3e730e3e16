"""Two real PyTorch service processes behind the gateway under steady load: one is killed
(SIGKILL, no drain) and no client call fails; it is started again on its port and takes
calls again."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.datasets import HOUSE_PRICE_INPUT
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.seed import SEED_MODEL
from serving.stack import Process, launch

pytestmark = [pytest.mark.slow, pytest.mark.framework]

Stub = pb_grpc.GRPCInferenceServiceStub
LOAD_S = 20.0
CONCURRENCY = 16
HEALTH_S = 0.5
ENV = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=SEED_MODEL)
    request.inputs.add(name=HOUSE_PRICE_INPUT, datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1800.0]], dtype=np.float32).tobytes())
    return request


def _inferences(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = pb.ModelStatisticsRequest(name=SEED_MODEL)
        statistics = Stub(channel).ModelStatistics(request, timeout=5)
    return sum(stats.inference_count for stats in statistics.model_stats)


def _replica(repository: Path, port: int = 0) -> Process:
    args = ["--model-repository", str(repository)]
    return launch("pytorch", "torch_service", args, env=ENV, port=port)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("failover") / "pytorch"
    command = [sys.executable, "-m", "torch_service", "seed", "--model-repository", str(path)]
    subprocess.run(command, check=True, env={**os.environ, **ENV}, timeout=120)
    return path


@pytest.fixture
def replicas(repository: Path) -> Iterator[list[Process]]:
    started = [_replica(repository), _replica(repository)]
    try:
        yield started
    finally:
        for process in started:
            process.stop()


def test_a_replica_killed_under_load(repository: Path, replicas: list[Process]) -> None:
    gateway = launch(
        "gateway",
        "gateway",
        env={
            "TWINSERVE_GATEWAY_PYTORCH_URL": ",".join(p.address for p in replicas),
            "TWINSERVE_GATEWAY_DEFAULT_FRAMEWORK": "pytorch",
            "TWINSERVE_GATEWAY_HEALTH_INTERVAL_S": str(HEALTH_S),
            "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
        },
    )
    stop = threading.Event()
    failures: list[tuple[Any, str]] = []
    answered = [0] * CONCURRENCY

    def client(index: int, stub: Stub) -> None:
        while not stop.is_set():
            try:
                stub.ModelInfer(_request(), timeout=10)
            except grpc.RpcError as exc:
                call: Any = exc
                failures.append((call.code(), call.details()))
            else:
                answered[index] += 1

    try:
        with (
            grpc.insecure_channel(gateway.address) as channel,
            ThreadPoolExecutor(CONCURRENCY) as pool,
        ):
            stub = Stub(channel)
            stub.ModelInfer(_request(), timeout=10)
            clients = [pool.submit(client, i, stub) for i in range(CONCURRENCY)]
            started = time.monotonic()
            time.sleep(4.0)
            victim = replicas[0]
            victim.popen.kill()  # SIGKILL: no drain, connections reset
            victim.popen.wait()
            before = sum(answered)
            time.sleep(2.0)
            calls_while_down = sum(answered) - before
            replicas[0] = _replica(repository, port=victim.port)
            deadline = time.monotonic() + 10 * HEALTH_S + 5
            while _inferences(replicas[0].address) == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            rejoined = _inferences(replicas[0].address)
            time.sleep(max(0.0, LOAD_S - (time.monotonic() - started)))
            stop.set()
            for future in clients:
                future.result()
        print(f"{sum(answered)} calls, {calls_while_down} while a replica was down")
        assert failures == []
        assert calls_while_down > 0
        assert rejoined > 0, "the restarted replica took no calls"
        assert _inferences(replicas[0].address) > 50
    finally:
        stop.set()
        assert gateway.stop() == 0
