"""Replica faults through real processes (fake-backend service processes, whose cheap model
runs on the event loop as a small real one does).

- A draining replica (or gateway) answers every call it accepted and refuses the rest with
  UNAVAILABLE, never CANCELLED (which a client cannot tell from its own cancellation).
- The fault run: two replicas on one shared repository behind a real gateway process, 16
  clients calling ModelInfer through the gateway while one replica is SIGKILLed and started
  again, the other is SIGTERMed (drained) and started again, and a new model version is
  copied into the repository. Not one call may fail, and every answer must be the one the
  version it names gives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc

from .oip import SEED_MODEL, eventually, price_request, prices, train_slope

pytestmark = pytest.mark.slow

Stub = pb_grpc.GRPCInferenceServiceStub
CLIENTS = 16
SERVICE = "tests.integration.fake_service"
# Version 1 (seeded) answers 0.2 x size, version 2 (copied in while serving) 0.25 x size.
EXPECTED = {"1": 360.0, "2": 450.0}
SIZE = 1800.0
ENV = {
    "TWINSERVE_LOG_LEVEL": "WARNING",
    "TWINSERVE_REPOSITORY_POLL_S": "0.2",
    "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
}
WAIT_S = 30.0
GRACE_S = 30.0


def _inferences(address: str, version: str = "") -> int:
    """Inferences the replica at `address` has run (of `version`, or all), asked directly."""
    with grpc.insecure_channel(address) as channel:
        request = pb.ModelStatisticsRequest(name=SEED_MODEL, version=version)
        try:
            statistics = Stub(channel).ModelStatistics(request, timeout=5)
        except grpc.RpcError:
            return 0  # not loaded (yet): none
    return sum(stats.inference_count for stats in statistics.model_stats)


@dataclass
class Load:
    """`CLIENTS` clients, each on its own channel, calling ModelInfer through the gateway."""

    address: str
    ok: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    wrong: list[tuple[str, list[float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = Stub(channel)
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(price_request(SIZE), timeout=10)
                except grpc.RpcError as exc:
                    call: Any = exc
                    with self._lock:
                        self.failures.append((call.code().name, call.details()))
                    continue
                answer = prices(response)
                expected = EXPECTED.get(response.model_version)
                with self._lock:
                    if expected is None or answer != pytest.approx([expected], abs=1e-2):
                        self.wrong.append((response.model_version, answer))
                    else:
                        self.ok += 1

    def more(self, calls: int) -> Callable[[], bool]:
        """A condition: `calls` more calls answered than now."""
        target = self.ok + calls
        return lambda: self.ok >= target

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()


def _replica(repository: Path, port: int = 0, **env: str) -> Process:
    args = ["--model-repository", str(repository)]
    return launch("replica", SERVICE, args, env={**ENV, **env}, port=port)


def _publish(repository: Path, staging: Path) -> None:
    """Copies a new version into the served repository as an operator would: under a hidden
    name first, then renamed into place (complete or absent)."""
    version = train_slope(staging, SEED_MODEL, 0.25)
    hidden = repository / SEED_MODEL / f".{version}.copying"
    shutil.copytree(staging / SEED_MODEL / str(version), hidden)
    hidden.rename(repository / SEED_MODEL / str(version))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    command = [sys.executable, "-m", SERVICE, "seed", "--model-repository", str(path)]
    subprocess.run(command, check=True, env={**os.environ, **ENV}, timeout=60)
    # The staging copy starts as the served one, so its next version is the served one's next.
    shutil.copytree(path, tmp_path / "staging")
    return path


@pytest.fixture(params=["replica", "gateway"])
def draining(request: pytest.FixtureRequest, repository: Path) -> Iterator[Process]:
    """The process the drain test stops: a replica, or a gateway in front of one."""
    replica = _replica(repository, TWINSERVE_GRACE_PERIOD_S=str(GRACE_S))
    if request.param == "replica":
        try:
            yield replica
        finally:
            replica.stop()
        return
    try:
        gateway = launch(
            "gateway",
            "gateway",
            env={
                **ENV,
                "TWINSERVE_GATEWAY_PYTORCH_URL": replica.address,
                "TWINSERVE_GATEWAY_DEFAULT_FRAMEWORK": "pytorch",
                "TWINSERVE_GATEWAY_GRACE_PERIOD_S": str(GRACE_S),
            },
        )
        try:
            yield gateway
        finally:
            gateway.stop()
    finally:
        replica.stop()


def test_a_draining_server_refuses_new_calls_unavailable(draining: Process) -> None:
    """Holds for a service replica and for the gateway: its clients (or the load balancer in
    front of several gateways) can take a refusal elsewhere, a cancellation they cannot."""
    ended: list[tuple[str, str]] = []
    answered = [0] * CLIENTS

    def client(index: int) -> None:
        """Calls until refused, as a client that goes elsewhere on UNAVAILABLE does."""
        with grpc.insecure_channel(draining.address) as channel:
            stub = Stub(channel)
            while True:
                try:
                    stub.ModelInfer(price_request(SIZE), timeout=10)
                except grpc.RpcError as exc:
                    call: Any = exc
                    ended.append((call.code().name, call.details()))
                    return
                answered[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        assert eventually(lambda: all(count >= 20 for count in answered), WAIT_S)
        draining.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert draining.popen.wait(WAIT_S) == 0
        exited = time.monotonic() - signalled
    finally:
        draining.stop()
        for thread in threads:
            thread.join()
    print(f"{sum(answered)} calls answered; exited {exited:.2f}s after SIGTERM")
    # Every client was told to go elsewhere, none had a call cancelled under it.
    assert [code for code, _ in ended] == ["UNAVAILABLE"] * CLIENTS, ended
    assert all("shutting down" in details for _, details in ended), ended
    # Nothing waited out the grace period: the drain ends once callers have left.
    assert exited < GRACE_S / 2


def test_zero_failed_calls_through_replica_faults(repository: Path) -> None:
    replicas = [_replica(repository), _replica(repository)]
    gateway = launch(
        "gateway",
        "gateway",
        env={
            **ENV,
            "TWINSERVE_GATEWAY_PYTORCH_URL": ",".join(r.address for r in replicas),
            "TWINSERVE_GATEWAY_DEFAULT_FRAMEWORK": "pytorch",
        },
    )
    load = Load(gateway.address)
    started = time.monotonic()

    def mark(what: str) -> None:  # progress, shown with -s
        elapsed = time.monotonic() - started
        print(f"{elapsed:6.2f}s {load.ok:6d} answered {len(load.failures)} failed: {what}")

    try:
        with load.running():
            assert eventually(load.more(200), WAIT_S)

            # One replica killed outright, its connections reset; started again on its port.
            killed = replicas[0]
            killed.popen.send_signal(signal.SIGKILL)
            killed.popen.wait()
            mark("killed")
            assert eventually(load.more(200), WAIT_S), "no calls answered while one was down"
            replicas[0] = _replica(repository, port=killed.port)
            mark("restarted killed")
            assert eventually(lambda: _inferences(replicas[0].address) > 0, WAIT_S)

            # The other drained (SIGTERM): what it accepted it answers, the rest goes elsewhere.
            drained = replicas[1]
            drained.popen.send_signal(signal.SIGTERM)
            assert drained.popen.wait(WAIT_S) == 0
            mark("drained")
            assert eventually(load.more(200), WAIT_S)
            replicas[1] = _replica(repository, port=drained.port)
            mark("restarted drained")
            assert eventually(lambda: _inferences(replicas[1].address) > 0, WAIT_S)

            # A new version copied in: every replica picks it up and serves it.
            _publish(repository, repository.parent / "staging")
            mark("published")
            assert eventually(
                lambda: all(_inferences(r.address, "2") > 0 for r in replicas), WAIT_S
            )
            assert eventually(load.more(200), WAIT_S)
        print(f"{load.ok} calls answered, {len(load.failures)} failed")
        assert load.failures == []
        assert load.wrong == []
    finally:
        assert gateway.stop() == 0
        for replica in replicas:
            replica.stop()
