"""Two real PyTorch service processes behind the gateway under steady load: one is killed
(SIGKILL, no drain), started again on its port and takes calls again; then the other is
drained (SIGTERM) and started again. No client call fails. Every step waits on the condition
it asserts, never on a fixed time. (The same run on fake-backend processes, with a new
version copied in: tests/integration/test_replica_faults.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.datasets import HOUSE_PRICE_INPUT
from serving.training.seed import SEED_MODEL
from tests.integration.oip import eventually

pytestmark = [pytest.mark.slow, pytest.mark.framework]

Stub = pb_grpc.GRPCInferenceServiceStub
WAIT_S = 60.0  # a bound on each wait, never a pause
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

    def more(calls: int) -> Callable[[], bool]:
        target = sum(answered) + calls
        return lambda: sum(answered) >= target

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
            assert eventually(more(200), WAIT_S)
            victim = replicas[0]
            victim.popen.kill()  # SIGKILL: no drain, connections reset
            victim.popen.wait()
            before = sum(answered)
            # The other replica answers alone while this one is down.
            assert eventually(more(100), WAIT_S), "no calls answered while a replica was down"
            calls_while_down = sum(answered) - before
            replicas[0] = _replica(repository, port=victim.port)
            assert eventually(lambda: _inferences(replicas[0].address) > 50, WAIT_S), (
                "the restarted replica took no calls"
            )
            drained = replicas[1]
            drained.popen.send_signal(signal.SIGTERM)  # drain: accepted calls are answered
            assert drained.popen.wait(WAIT_S) == 0
            assert eventually(more(100), WAIT_S)
            replicas[1] = _replica(repository, port=drained.port)
            assert eventually(lambda: _inferences(replicas[1].address) > 50, WAIT_S)
            stop.set()
            for future in clients:
                future.result()
        print(f"{sum(answered)} calls, {calls_while_down} while a replica was down")
        assert failures == []
    finally:
        stop.set()
        assert gateway.stop() == 0
