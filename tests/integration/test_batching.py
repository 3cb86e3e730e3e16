"""Dynamic batching through gRPC: batched answers equal unbatched ones exactly, per request;
limits answer with clear statuses; ModelConfig and ModelStatistics report it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import AioThread
from tests.integration.oip import SEED_MODEL, price_request, rpc_error

BATCHING = {
    "max_batch_size": 16,
    "dynamic_batching": {
        "max_queue_delay_microseconds": 20_000,
        "preferred_batch_size": [8, 16],
        # Above the 96 requests the tests fire at once: on a loaded machine all of them can
        # be waiting before the first batch runs, and a full queue is not what they test.
        "default_queue_policy": {"max_queue_size": 128},
    },
}


class Gate:
    """Holds the model's calls until opened; `entered` is set when one is waiting."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        self.open.wait(10)


@contextmanager
def stub_for(
    aio: AioThread,
    root: Path,
    config: dict[str, Any] | None,
    backend: AffineBackend | None = None,
    **settings: Any,
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    if config is not None:
        (root / SEED_MODEL / CONFIG_FILE).write_text(json.dumps(config))
    with (
        aio.service(root, backend or AffineBackend(), repository_poll_s=0, **settings) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _raw(response: pb.ModelInferResponse) -> bytes:
    (raw,) = response.raw_output_contents
    return bytes(raw)


def _requests(count: int, seed: int = 7) -> list[pb.ModelInferRequest]:
    """Requests of 1 to 4 rows with sizes no two requests share, so a row answered to the
    wrong request would be caught."""
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(count):
        rows = int(rng.integers(1, 5))
        sizes = (500 + rng.random(rows) * 2250).astype(np.float32)
        requests.append(price_request(*sizes.tolist(), id=f"r{index}"))
    return requests


def _fire(
    stub: pb_grpc.GRPCInferenceServiceStub, requests: list[pb.ModelInferRequest]
) -> list[pb.ModelInferResponse]:
    """Sends every request at once (futures), returns the answers in request order."""
    futures = [stub.ModelInfer.future(request, timeout=20) for request in requests]
    return [future.result() for future in futures]


def _stats(stub: pb_grpc.GRPCInferenceServiceStub) -> pb.ModelStatistics:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    (stats,) = response.model_stats
    return stats


@pytest.mark.parametrize("inline_max_us", [0, 10_000_000], ids=["thread", "inline"])
def test_batched_answers_equal_unbatched_ones_exactly(
    aio: AioThread, seeded_repository: Callable[[], Path], inline_max_us: int
) -> None:
    requests = _requests(96)
    with stub_for(aio, seeded_repository(), None) as plain:
        expected = [_raw(plain.ModelInfer(r, timeout=10)) for r in requests]
    with stub_for(aio, seeded_repository(), BATCHING, inline_max_us=inline_max_us) as batched:
        answers = _fire(batched, requests)
        stats = _stats(batched)

    for request, response, want in zip(requests, answers, expected, strict=True):
        assert response.id == request.id
        assert list(response.outputs[0].shape) == list(request.inputs[0].shape)
        assert _raw(response) == want, f"request {request.id} got other rows back"
    rows = sum(r.inputs[0].shape[0] for r in requests)
    assert stats.inference_count == rows
    assert stats.inference_stats.success.count == len(requests)
    # Batches formed: fewer framework calls than requests, and no call over max_batch_size.
    assert stats.execution_count < len(requests) // 2
    sizes = {b.batch_size: b.compute_infer.count for b in stats.batch_stats}
    assert max(sizes) <= 16 and max(sizes) > 4
    assert sum(size * count for size, count in sizes.items()) == rows
    assert sum(sizes.values()) == stats.execution_count
    assert stats.inference_stats.queue.count == len(requests)


def test_a_lone_request_waits_at_most_the_queue_delay(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 50_000}}
    with stub_for(aio, seeded_repository(), config) as stub:
        response = stub.ModelInfer(price_request(1800), timeout=5)
        assert np.frombuffer(_raw(response), np.float32).tolist() == [360.0]
        queue = _stats(stub).inference_stats.queue
    # It waited for company that never came, then ran alone.
    assert queue.count == 1 and 40e6 <= queue.ns <= 2e9


def test_a_request_over_max_batch_size_is_invalid(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    with stub_for(aio, seeded_repository(), BATCHING) as stub:
        code, details = rpc_error(stub.ModelInfer, price_request(*range(17)), timeout=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_batch_size" in details
        # The service goes on batching.
        assert _raw(stub.ModelInfer(price_request(*range(16)), timeout=5))


def test_a_full_queue_is_resource_exhausted_and_then_drains(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    gate = Gate()
    gate.open.set()  # open while the service loads and warms the model up
    config = {
        "max_batch_size": 4,
        "dynamic_batching": {"default_queue_policy": {"max_queue_size": 2}},
    }
    backend = AffineBackend(gate=gate)
    # One thread, so one batch in flight; the gate blocks it (never the event loop).
    with stub_for(
        aio, seeded_repository(), config, backend, inference_threads=1, inline_max_us=0
    ) as stub:
        gate.open.clear()
        gate.entered.clear()
        held = stub.ModelInfer.future(price_request(1000), timeout=20)
        assert gate.entered.wait(5)
        queued = [stub.ModelInfer.future(price_request(1800), timeout=20) for _ in range(2)]
        code, details = rpc_error(stub.ModelInfer, price_request(2000), timeout=5)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in details
        gate.open.set()
        assert np.frombuffer(_raw(held.result()), np.float32).tolist() == [200.0]
        for future in queued:
            assert np.frombuffer(_raw(future.result()), np.float32).tolist() == [360.0]
        # The two queued requests ran together, after the held one.
        sizes = {b.batch_size: b.compute_infer.count for b in _stats(stub).batch_stats}
        assert sizes.get(2) == 1


def test_model_config_reports_batching_as_triton_does(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    with stub_for(aio, seeded_repository(), BATCHING) as stub:
        config = stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL), timeout=5).config
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 20_000
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 128
    # With max_batch_size > 0 the dims leave the batch dimension out.
    assert [list(i.dims) for i in config.input] == [[1]]


def test_a_bad_batching_configuration_keeps_the_model_out_with_the_reason(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    bad = {"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}}
    with stub_for(aio, seeded_repository(), bad) as stub:
        code, details = rpc_error(stub.ModelInfer, price_request(1800), timeout=5)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    # The model is known (its load failed before the service started): UNAVAILABLE, with why.
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "preferred_batch_size 8 exceeds max_batch_size 4" in details
    (entry,) = [m for m in index.models if m.name == SEED_MODEL]
    assert entry.state == "UNAVAILABLE"
    assert "preferred_batch_size 8 exceeds max_batch_size 4" in entry.reason


def _two_input_request(sizes: list[float], extra_rows: int, id: str = "") -> pb.ModelInferRequest:
    request = price_request(*sizes, id=id)
    extra = np.zeros((extra_rows, 1), np.float32)
    request.inputs.add(name="extra", datatype="FP32", shape=extra.shape)
    request.raw_input_contents.append(extra.tobytes())
    return request


@pytest.mark.parametrize(
    "config", [BATCHING, {"max_batch_size": 16}], ids=["dynamic_batching", "max_batch_size"]
)
def test_a_two_input_request_whose_inputs_differ_in_rows_is_invalid(
    aio: AioThread, seeded_repository: Callable[[], Path], config: dict[str, Any]
) -> None:
    # house_price declared with a second input (the fake model reads only the first): rows of
    # one request's inputs must line up, or a batch would hand them to other requests; with
    # max_batch_size the first dimension is the batch, batched or not (as in Triton).
    root = seeded_repository()
    meta_path = root / SEED_MODEL / "1" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["signature"]["inputs"].append({"name": "extra", "datatype": "FP32", "shape": [-1, 1]})
    meta_path.write_text(json.dumps(meta))
    with stub_for(aio, root, config) as stub:
        code, details = rpc_error(
            stub.ModelInfer, _two_input_request([1800, 1000], extra_rows=1), timeout=5
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "same number of rows" in details and "'extra'" in details
        # Matching rows are served, each request its own rows.
        requests = [_two_input_request([1000 + i, 2000 + i], 2, id=f"r{i}") for i in range(8)]
        for index, response in enumerate(_fire(stub, requests)):
            got = np.frombuffer(_raw(response), np.float32).tolist()
            assert got == pytest.approx([0.2 * (1000 + index), 0.2 * (2000 + index)], abs=1e-2)
