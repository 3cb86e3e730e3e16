"""Per-worker metrics ports: with `TWINSERVE_WORKERS=2` and `TWINSERVE_METRICS_PORT=P`, worker
k (a process of its own, with its own registry) serves /metrics on P + k, each page counting
that worker's calls only."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import WAIT_S
from tests.integration.oip import SEED_MODEL, eventually, price_request, prices

MODULE = "tests.integration.fake_service"
WORKERS = 2
# A short grace period: nothing is in flight at the end, and the supervisor waits on it.
ENV = {
    "TWINSERVE_LOG_LEVEL": "WARNING",
    "TWINSERVE_REPOSITORY_POLL_S": "0",
    "TWINSERVE_GRACE_PERIOD_S": "1",
}
REQUESTS = "twinserve_inference_requests_total"


def _free_port_pair() -> int:
    """A port P with P + 1 free as well (the OS hands out single free ports only)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port + WORKERS - 1 > 65535:
                continue
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def _requests_counted(port: int) -> float:
    """The worker's successful ModelInfer count for the seed model, from its /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == REQUESTS
        and sample.labels.get("model") == SEED_MODEL
        and sample.labels.get("code") == "OK"
    )


def _call_on_a_new_connection(address: str) -> int:
    """One prediction on a connection of its own (the kernel picks the worker for each new
    connection), then the statistics of the worker that answered: its success count."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert prices(stub.ModelInfer(price_request(1800), timeout=10)) == pytest.approx([360.0])
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    return int(statistics.model_stats[0].inference_stats.success.count)


@pytest.fixture(scope="module")
def workers(seeded_repository: Callable[[], Path]) -> Iterator[tuple[Process, int]]:
    repository = seeded_repository()
    metrics_port = _free_port_pair()
    env = {**ENV, "TWINSERVE_WORKERS": str(WORKERS), "TWINSERVE_METRICS_PORT": str(metrics_port)}
    # The supervisor writes its port file once every worker listens (metrics included).
    process = launch("workers", MODULE, ["--model-repository", str(repository)], env=env)
    try:
        yield process, metrics_port
    finally:
        process.stop()


def test_each_worker_serves_its_own_counters_on_port_plus_its_index(
    workers: tuple[Process, int],
) -> None:
    process, metrics_port = workers
    ports = [metrics_port + k for k in range(WORKERS)]
    assert [_requests_counted(port) for port in ports] == [0.0] * WORKERS

    # New connections until both workers have answered some calls; each call's statistics
    # say how many calls its worker has answered so far, so the highest count seen per
    # worker is that worker's total.
    calls = 0
    seen: set[int] = set()

    def both_answered() -> bool:
        nonlocal calls
        seen.add(_call_on_a_new_connection(process.address))
        calls += 1
        return calls >= 8 and all(_requests_counted(port) > 0 for port in ports)

    assert eventually(both_answered, timeout=WAIT_S), "one worker took every connection"
    counted = [_requests_counted(port) for port in ports]
    # Each page counts one worker's calls: together every call once, neither all of them
    # (a page showing the supervisor's or the other worker's registry would not add up).
    assert sum(counted) == calls
    assert all(0 < count < calls for count in counted)
    # And each page's count is one a worker's own statistics reported through gRPC (its
    # last answer on a new connection saw that many calls).
    assert {int(c) for c in counted} <= seen
