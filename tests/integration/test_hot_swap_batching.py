"""Hot swap of a changed `dynamic_batching` configuration: the repository poller sees the new
`config.json`, loads the version again beside the old one and swaps it in, while calls keep
succeeding; `ModelConfig` then reports the new values and batches form by the new rules."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import WAIT_S, AioThread
from tests.integration.oip import SEED_MODEL, eventually, price_request, prices, rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub

# Before: batches of at most 2 rows, sent at once (no delay).
OLD = {
    "max_batch_size": 2,
    "dynamic_batching": {"default_queue_policy": {"max_queue_size": 64}},
}
# After: up to 8 rows, waiting up to 1 s for company unless 8 rows are queued (long, so that
# eight requests sent at once surely meet in one batch, even on a busy machine).
NEW_DELAY_US = 1_000_000
NEW = {
    "max_batch_size": 8,
    "dynamic_batching": {
        "max_queue_delay_microseconds": NEW_DELAY_US,
        "preferred_batch_size": [8],
        "default_queue_policy": {"max_queue_size": 32},
    },
}


class ComputeTime:
    """Passed as the fake backend's gate: every framework call takes a few milliseconds, as a
    real model's would, so calls are in flight whenever the swap happens."""

    def wait(self) -> None:
        time.sleep(0.005)


def _write_config(root: Path, config: dict[str, object]) -> None:
    """Renamed into place, as a deployment tool would, so the poller never reads half a file."""
    path = root / SEED_MODEL / CONFIG_FILE
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(config))
    os.replace(scratch, path)


def _config(stub: Stub) -> pb.ModelConfig:
    return stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL), timeout=5).config


def _stats(stub: Stub) -> pb.ModelStatistics:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    (stats,) = response.model_stats
    return stats


def _batch_counts(stub: Stub) -> dict[int, int]:
    return {b.batch_size: b.compute_infer.count for b in _stats(stub).batch_stats}


class Traffic:
    """Clients calling in a loop from threads, each on its own channel, recording every
    answer, until stopped."""

    def __init__(self, port: int, clients: int = 3) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[tuple[str, str]] = []
        self.wrong: list[tuple[list[float], list[float]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        sizes = [[1000.0 + index], [1500.0 + index, 2000.0 + index]]  # 1 and 2 rows: valid both
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = Stub(channel)
            turn = 0
            while not self._stop.is_set():
                x = sizes[turn % 2]
                turn += 1
                try:
                    got = prices(stub.ModelInfer(price_request(*x), timeout=10))
                except grpc.RpcError as exc:
                    with self._lock:
                        self.failures.append((exc.code().name, exc.details() or ""))
                    continue
                with self._lock:
                    if got == pytest.approx([0.2 * v for v in x], rel=1e-5):
                        self.ok += 1
                    else:
                        self.wrong.append((x, got))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_S)


@pytest.fixture
def served(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> Iterator[tuple[Path, int, Stub]]:
    root = seeded_repository()
    _write_config(root, OLD)
    with (
        aio.service(
            root, AffineBackend(gate=ComputeTime()), repository_poll_s=0.1, inline_max_us=0
        ) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield root, service.port, Stub(channel)


def test_a_changed_batching_configuration_is_swapped_in_under_traffic(
    served: tuple[Path, int, Stub],
) -> None:
    root, port, stub = served
    before = _config(stub)
    assert before.max_batch_size == 2
    assert before.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(before.dynamic_batching.preferred_batch_size) == []
    # The old bound holds: 5 rows are more than max_batch_size 2.
    code, details = rpc_error(stub.ModelInfer, price_request(*range(5)), timeout=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 2" in details

    # And a lone request runs at once: the old configuration has no queue delay.
    queue = _stats(stub).inference_stats.queue
    assert prices(stub.ModelInfer(price_request(1800), timeout=5)) == pytest.approx([360.0])
    assert _stats(stub).inference_stats.queue.ns - queue.ns < 0.5 * NEW_DELAY_US * 1000

    traffic = Traffic(port)
    try:
        assert eventually(lambda: traffic.ok >= 30, timeout=WAIT_S)
        _write_config(root, NEW)
        assert eventually(lambda: _config(stub).max_batch_size == 8, timeout=WAIT_S)
        swapped_at = traffic.ok
        # Calls go on succeeding on the new configuration, not only across the swap.
        assert eventually(lambda: traffic.ok >= swapped_at + 9, timeout=WAIT_S)
    finally:
        traffic.stop()
    assert traffic.failures == []
    assert traffic.wrong == []

    after = _config(stub)
    assert after.max_batch_size == 8
    assert after.dynamic_batching.max_queue_delay_microseconds == NEW_DELAY_US
    assert list(after.dynamic_batching.preferred_batch_size) == [8]
    assert after.dynamic_batching.default_queue_policy.max_queue_size == 32
    # Still one version: the configuration changed, not the model.
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    assert [(m.name, m.version, m.state) for m in index.models] == [(SEED_MODEL, "1", "READY")]

    # The new bound: 5 rows are fine now, 9 are not.
    five = [1000.0 + v for v in range(5)]
    assert prices(stub.ModelInfer(price_request(*five), timeout=5)) == pytest.approx(
        [0.2 * v for v in five]
    )
    code, details = rpc_error(stub.ModelInfer, price_request(*range(9)), timeout=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 8" in details

    # Eight one-row requests at once fill the preferred size and run as one batch of 8,
    # which the old max_batch_size of 2 could never form.
    counts = _batch_counts(stub)
    sizes = [900.0 + 10 * i for i in range(8)]
    futures = [stub.ModelInfer.future(price_request(s), timeout=10) for s in sizes]
    for size, future in zip(sizes, futures, strict=True):
        assert prices(future.result()) == pytest.approx([0.2 * size])
    grown = {n: c - counts.get(n, 0) for n, c in _batch_counts(stub).items()}
    assert {n: c for n, c in grown.items() if c} == {8: 1}

    # A lone request now waits out the new queue delay for company (the old one had none).
    queue = _stats(stub).inference_stats.queue
    assert prices(stub.ModelInfer(price_request(1800), timeout=5)) == pytest.approx([360.0])
    waited_ns = _stats(stub).inference_stats.queue.ns - queue.ns
    assert waited_ns >= 0.9 * NEW_DELAY_US * 1000
