"""One request moves the Triton statistics (ModelStatistics) and the Prometheus inference
metrics by exactly one each, whichever way it ends: answered alone or in a dynamic batch,
refused before its framework call, or failed after it. Both books are written by one ledger
call per request (`serving.engine.ledger`), so they cannot count different requests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.backend import Model
from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import AioThread
from tests.integration.oip import SEED_MODEL, price_request, rpc_error

BATCHING = {
    "max_batch_size": 16,
    "dynamic_batching": {"max_queue_delay_microseconds": 1000},
}
LABELS = {
    "model": SEED_MODEL,
    "version": "1",
    "framework": "fake",
    "runtime": "native",
    "device": "cpu",
}


class _Hollow:
    """A model that runs its framework call, then answers none of its declared outputs
    while `backend.hollow` is set (a failure after the call: INTERNAL)."""

    def __init__(self, model: Model, backend: FlakyBackend) -> None:
        self.model = model
        self.backend = backend

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.model.predict(inputs)
        return {} if self.backend.hollow else outputs

    def close(self) -> None:
        self.model.close()


class FlakyBackend(AffineBackend):
    def __init__(self) -> None:
        super().__init__()
        self.hollow = False  # off for warm-up

    def load(self, *args: Any, **kwargs: Any) -> Model:
        return _Hollow(super().load(*args, **kwargs), self)


def _books(stub: pb_grpc.GRPCInferenceServiceStub, registry: CollectorRegistry) -> dict[str, float]:
    """Every count either book keeps of the seed model's requests."""
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    # A version is listed once it has had a request; before, every count is 0.
    (stats,) = answer.model_stats or [pb.ModelStatistics()]
    inference = stats.inference_stats

    def metric(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {**LABELS, **labels}) or 0.0

    books = {
        "statistics success": inference.success.count,
        "statistics fail": inference.fail.count,
        "statistics queue": inference.queue.count,
        "statistics compute_input": inference.compute_input.count,
        "statistics compute_infer": inference.compute_infer.count,
        "statistics compute_output": inference.compute_output.count,
        "statistics inference_count": stats.inference_count,
        "statistics execution_count": stats.execution_count,
        "statistics batch executions": sum(b.compute_infer.count for b in stats.batch_stats),
    }
    for code in ("OK", "INVALID_ARGUMENT", "INTERNAL"):
        books[f"metrics {code}"] = metric("twinserve_inference_requests_total", code=code)
    for histogram in ("request_duration_seconds", "queue_duration_seconds"):
        books[f"metrics {histogram}"] = metric(f"twinserve_inference_{histogram}_count")
    books["metrics compute_duration_seconds"] = metric(
        "twinserve_inference_compute_duration_seconds_count"
    )
    books["metrics batch_size"] = metric("twinserve_inference_batch_size_count")
    return {name: float(count) for name, count in books.items()}


@contextmanager
def _service(
    aio: AioThread, root: Path, config: dict[str, Any] | None, backend: AffineBackend
) -> Iterator[tuple[pb_grpc.GRPCInferenceServiceStub, CollectorRegistry]]:
    if config is not None:
        (root / SEED_MODEL / CONFIG_FILE).write_text(json.dumps(config))
    with (
        aio.service(root, backend, repository_poll_s=0) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        assert service.registry is not None
        yield pb_grpc.GRPCInferenceServiceStub(channel), service.registry


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if after[name] != before[name]}


ANSWERED = {
    "statistics success": 1,
    "statistics queue": 1,
    "statistics compute_input": 1,
    "statistics compute_infer": 1,
    "statistics compute_output": 1,
    "statistics inference_count": 1,
    "statistics execution_count": 1,
    "statistics batch executions": 1,
    "metrics OK": 1,
    "metrics request_duration_seconds": 1,
    "metrics queue_duration_seconds": 1,
    "metrics compute_duration_seconds": 1,
    "metrics batch_size": 1,
}
# A dynamic batch's framework call is written when it runs, whatever becomes of its
# requests; an unbatched request's call is written with the request's success.
BATCH_RAN = {
    "statistics execution_count": 1,
    "statistics batch executions": 1,
    "metrics batch_size": 1,
}


@pytest.mark.parametrize("config", [None, BATCHING], ids=["unbatched", "batched"])
def test_one_request_moves_both_books_by_one(
    aio: AioThread, seeded_repository: Callable[[], Path], config: dict[str, Any] | None
) -> None:
    backend = FlakyBackend()
    with _service(aio, seeded_repository(), config, backend) as (stub, registry):
        before = _books(stub, registry)
        stub.ModelInfer(price_request(1800.0), timeout=5)
        answered = _books(stub, registry)
        assert _moved(before, answered) == ANSWERED

        wrong = price_request(1800.0)
        wrong.inputs[0].datatype = "FP64"
        wrong.raw_input_contents[0] = np.zeros(1, np.float64).tobytes()
        assert rpc_error(stub.ModelInfer, wrong, timeout=5)[0] == grpc.StatusCode.INVALID_ARGUMENT
        refused = _books(stub, registry)
        assert _moved(answered, refused) == {"statistics fail": 1, "metrics INVALID_ARGUMENT": 1}

        backend.hollow = True
        assert rpc_error(stub.ModelInfer, price_request(1800.0), timeout=5)[0] == (
            grpc.StatusCode.INTERNAL
        )
        failed = _books(stub, registry)
    expected = {"statistics fail": 1, "metrics INTERNAL": 1}
    if config is not None:
        expected |= BATCH_RAN
    assert _moved(refused, failed) == expected
