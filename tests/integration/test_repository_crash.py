"""A process killed (SIGKILL) while it writes a version leaves no half version: the
repository still lists and a running service still serves the previous one, and the next
commit works. A service stopped (SIGTERM) with a training epoch that does not end exits
after TWINSERVE_JOB_STOP_TIMEOUT_S. Real processes throughout."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc

from .conftest import WAIT_S
from .oip import eventually, price_request, prices, train_slope
from .training import train_request

ROOT = Path(__file__).resolve().parents[2]
Served = tuple[Path, Service, pb_grpc.GRPCInferenceServiceStub]


def _line(stream: IO[str], timeout: float = WAIT_S) -> str:
    """The next line of a child's output, waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                return stream.readline().strip()
    raise AssertionError(f"no output within {timeout}s")


@pytest.fixture
def served(aio: Any, tmp_path: Path) -> Iterator[Served]:
    """A repository with version 1 of `house` (price = 2 x size), served by a service that
    polls it."""
    repository = tmp_path / "models"
    assert train_slope(repository, "house", 2.0) == 1
    with (
        aio.service(repository, AffineBackend(), repository_poll_s=0.05) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield repository, service, pb_grpc.GRPCInferenceServiceStub(channel)


def _served(stub: pb_grpc.GRPCInferenceServiceStub) -> tuple[str, list[float]]:
    response = stub.ModelInfer(price_request(100.0, model="house"))
    return response.model_version, prices(response)


@pytest.mark.parametrize("stage", ["writing", "syncing", "claimed"])
def test_a_writer_killed_mid_version_leaves_the_previous_one_served(
    aio: Any, served: Served, stage: str
) -> None:
    repository, service, stub = served
    assert _served(stub) == ("1", [pytest.approx(200.0)])
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.crashing_writer",
            str(repository),
            "house",
            stage,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert _line(writer.stdout) == "PAUSED"
    finally:
        writer.kill()
        writer.communicate(timeout=WAIT_S)
    assert writer.returncode == -signal.SIGKILL
    # The half-written version is nowhere a reader looks.
    assert ModelRepository(repository).versions("house") == [1]
    assert ModelRepository(repository).models() == ["house"]
    # The service, rescanning after the kill, serves version 1 still.
    aio.run(asyncio.to_thread(service.manager.refresh))
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="house"))
    assert list(metadata.versions) == ["1"]
    assert _served(stub) == ("1", [pytest.approx(200.0)])
    # The next writer commits past whatever the dead one claimed, and it is served.
    version = train_slope(repository, "house", 3.0)
    assert version == (3 if stage == "claimed" else 2)

    assert eventually(lambda: _served(stub)[0] == str(version), WAIT_S)
    assert _served(stub)[1] == [pytest.approx(300.0)]


def test_stop_waits_for_a_stuck_epoch_only_so_long(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {
        **os.environ,
        "TWINSERVE_MODEL_REPOSITORY": str(tmp_path / "models"),
        "TWINSERVE_TENSORBOARD_DIR": str(tmp_path / "runs"),
        "TWINSERVE_PORT_FILE": str(port_file),
        "TWINSERVE_GRACE_PERIOD_S": "0.5",
        "TWINSERVE_JOB_STOP_TIMEOUT_S": "1",
        "TWINSERVE_REPOSITORY_POLL_S": "0",
        # One epoch of the fake backend takes ten minutes: it never ends within the test.
        "STUCK_EPOCH_S": "600",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stuck_service"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert service.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        port = int(port_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = tpb_grpc.TrainingServiceStub(channel).Train(
                train_request("stuck", epochs=2), timeout=WAIT_S
            )
            started = next(call)
            assert started.WhichOneof("event") == "started"
            start = time.monotonic()
            service.send_signal(signal.SIGTERM)
            service.wait(WAIT_S)  # without a bound: ten minutes
            stopped_in = time.monotonic() - start
    finally:
        if service.poll() is None:
            service.kill()
        _, log = service.communicate(timeout=WAIT_S)
    assert service.returncode == 0, log
    assert stopped_in < 20, stopped_in  # grace 0.5 s + 1 s + exit; unbounded: 600 s
    assert f"training job {started.job_id} did not stop within 1.0s" in log
    # The job committed nothing.
    assert not (tmp_path / "models" / "stuck").exists()
