"""Requests built to cost the server more than they are worth, through a real grpc.aio service
with the NumPy backend: each is answered at once with the status that names the client's
mistake, and no other client waits on it. Also Triton's statistics that perf_analyzer reads.

Time bounds here are far above what the fixed server needs (milliseconds) and far below what
the mistakes cost before (seconds: 9.5 s for the 30,000-dimension shape, 4.3 s to decode the
19 MiB BYTES input, 1.5 s for 8M typed values on a 2-core VM)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from tests.integration.conftest import WAIT_S, AioThread
from tests.integration.oip import HOUSE_PRICE_INPUT, SEED_MODEL, price_request, prices, rpc_error
from tests.integration.training import train_request

Stub = pb_grpc.GRPCInferenceServiceStub
INVALID = grpc.StatusCode.INVALID_ARGUMENT
QUICK_S = 0.6
_BIG_MESSAGES = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]
MAX_BATCH = 4


def _channel(service: Service) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{service.port}", options=_BIG_MESSAGES)


@pytest.fixture(scope="module")
def service(aio: AioThread, seeded_repository: Callable[[], Path]) -> Iterator[Service]:
    with aio.service(seeded_repository(), AffineBackend()) as service:
        yield service


@pytest.fixture(scope="module")
def stub(service: Service) -> Iterator[Stub]:
    with _channel(service) as channel:
        yield Stub(channel)


@pytest.fixture(scope="module")
def bystander(service: Service) -> Iterator[Stub]:
    """Another client of the same service, on its own channel."""
    with _channel(service) as channel:
        yield Stub(channel)


@contextmanager
def _configured(
    aio: AioThread, seeded_repository: Callable[[], Path], config: dict[str, Any]
) -> Iterator[Stub]:
    root = seeded_repository()
    (root / SEED_MODEL / CONFIG_FILE).write_text(json.dumps(config))
    with (
        aio.service(root, AffineBackend(), repository_poll_s=0) as service,
        _channel(service) as channel,
    ):
        yield Stub(channel)


@pytest.fixture(scope="module")
def batching(aio: AioThread, seeded_repository: Callable[[], Path]) -> Iterator[Stub]:
    """A service whose model batches at most MAX_BATCH rows a call."""
    config = {"max_batch_size": MAX_BATCH, "dynamic_batching": {}}
    with _configured(aio, seeded_repository, config) as stub:
        yield stub


@pytest.fixture(scope="module")
def bounded(aio: AioThread, seeded_repository: Callable[[], Path]) -> Iterator[Stub]:
    """A service whose model takes at most MAX_BATCH rows a request, without batching."""
    with _configured(aio, seeded_repository, {"max_batch_size": MAX_BATCH}) as stub:
        yield stub


def _with_shape(shape: list[int], datatype: str = "FP32", **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=SEED_MODEL, **fields)
    request.inputs.add(name=HOUSE_PRICE_INPUT, datatype=datatype, shape=shape)
    return request


def _raw(shape: list[int], raw: bytes, datatype: str = "FP32") -> pb.ModelInferRequest:
    return _with_shape(shape, datatype, raw_input_contents=[raw])


def _typed(shape: list[int], values: Any) -> pb.ModelInferRequest:
    request = _with_shape(shape)
    request.inputs[0].contents.fp32_contents.extend(values)
    return request


def _timed_error(stub: Stub, request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    code, details = rpc_error(stub.ModelInfer, request, timeout=WAIT_S)
    return code, details, time.monotonic() - started


def _ready_latencies(stub: Stub, busy: Callable[[], bool], at_least: int = 3) -> list[float]:
    """Seconds each ModelReady call took, asked over and over while `busy()` holds."""
    latencies: list[float] = []
    while busy() or len(latencies) < at_least:
        started = time.monotonic()
        assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL), timeout=WAIT_S).ready
        latencies.append(time.monotonic() - started)
    return latencies


# ---- shapes of too many dimensions ----


@pytest.mark.parametrize("rank", [65, 300])
@pytest.mark.parametrize("typed", [False, True])
def test_too_many_dimensions_are_invalid(stub: Stub, rank: int, typed: bool) -> None:
    shape = [1] * rank
    request = _typed(shape, [1.0]) if typed else _raw(shape, b"\0" * 4)
    code, details, seconds = _timed_error(stub, request)
    assert code == INVALID
    assert f"{rank} dimensions; at most 64" in details
    assert seconds < QUICK_S


def test_thirty_thousand_huge_dimensions_stall_no_one(stub: Stub, bystander: Stub) -> None:
    """A 270 KB shape of 30,000 dimensions of 2**62 once held the event loop for seconds
    while Python multiplied it out; other clients' calls waited throughout."""
    request = _raw([2**62] * 30_000, b"")
    assert request.ByteSize() > 250_000
    done: dict[int, float] = {}
    started = time.monotonic()
    calls = [stub.ModelInfer.future(request, timeout=WAIT_S) for _ in range(3)]
    for index, call in enumerate(calls):
        call.add_done_callback(lambda _, index=index: done.setdefault(index, time.monotonic()))
    latencies = _ready_latencies(bystander, lambda: not all(call.done() for call in calls))
    for call in calls:
        error = cast(grpc.Call, call.exception())
        assert error is not None and error.code() == INVALID
        assert "30000 dimensions" in (error.details() or "")
    assert max(done.values()) - started < QUICK_S
    assert max(latencies) < QUICK_S


@pytest.mark.parametrize(("rank", "dim"), [(65, 1), (300, 1), (30_000, 2**62)])
def test_train_refuses_too_many_dimensions(service: Service, rank: int, dim: int) -> None:
    """The training API's inline tensors (the same mistake through Train)."""
    inputs = tpb.Tensor(shape=[dim] * rank, values=[1.0])
    dataset = tpb.Dataset(
        inline=tpb.InlineData(inputs=inputs, targets=tpb.Tensor(shape=[1, 1], values=[1.0]))
    )
    with _channel(service) as channel:
        training = tpb_grpc.TrainingServiceStub(channel)
        started = time.monotonic()
        code, details = rpc_error(
            lambda request: list(training.Train(request, timeout=WAIT_S)),
            train_request("hostile", dataset),
        )
    assert code == INVALID, details
    assert f"{rank} dimensions" in details
    assert time.monotonic() - started < QUICK_S


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_more_inputs_or_outputs_than_the_model_has_are_refused_at_once(
    stub: Stub, bystander: Stub, kind: str
) -> None:
    """300,000 inputs (7 MiB) took seconds of the event loop to read one by one."""
    request = price_request(1800.0)
    if kind == "inputs":
        for index in range(300_000):
            request.inputs.add(name=f"x{index}", datatype="FP32", shape=[1, 1])
            request.raw_input_contents.append(b"\0" * 4)
    else:
        for index in range(300_000):
            request.outputs.add(name=f"y{index}")
    call = stub.ModelInfer.future(request, timeout=WAIT_S)
    latencies = _ready_latencies(bystander, lambda: not call.done(), at_least=1)
    assert max(latencies) < QUICK_S
    error = cast(grpc.Call, call.exception())
    assert error is not None and error.code() == INVALID
    asked = len(request.inputs if kind == "inputs" else request.outputs)
    assert f"names {asked} {kind}; model 'house_price' has 1" in (error.details() or "")


def test_parameter_maps_are_bounded(stub: Stub, bystander: Stub) -> None:
    """Every entry of a parameter map was read (300,000 took a second of the event loop);
    past 64 the request is refused unread. (Protobuf's own parsing of a map, before any
    handler runs, is not bounded here: past ~150,000 entries it takes seconds too.)"""
    request = price_request(1800.0)
    for index in range(100_000):
        request.parameters[f"p{index}"].bool_param = True
    call = stub.ModelInfer.future(request, timeout=WAIT_S)
    latencies = _ready_latencies(bystander, lambda: not call.done(), at_least=1)
    assert max(latencies) < QUICK_S
    error = cast(grpc.Call, call.exception())
    assert error is not None and error.code() == INVALID
    assert "the request carries 100000 parameters; at most 64" in (error.details() or "")
    # A tensor's map too; 64 parameters are fine.
    request = price_request(1800.0)
    output = request.outputs.add(name="price_k")
    for index in range(65):
        output.parameters[f"p{index}"].bool_param = True
    code, details = rpc_error(stub.ModelInfer, request)
    assert code == INVALID and "output 'price_k' carries 65 parameters" in details
    request = price_request(1800.0)
    for index in range(64):
        request.parameters[f"p{index}"].bool_param = True
    assert prices(stub.ModelInfer(request)) == pytest.approx([360.0])


# ---- declared shape against the contents sent ----


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_raw([2**62, 1], b""), "raw contents hold 0 bytes"),
        (_raw([2**40, 2**40], b"\0" * 4), "raw contents hold 4 bytes"),
        (_typed([2**40, 2**40], [1.0]), "contents hold 1"),
        (_typed([2**62, 1], []), "contents hold 0"),
    ],
    ids=["raw-empty", "raw-4-bytes", "typed-one-value", "typed-empty"],
)
def test_a_shape_its_contents_do_not_fill_is_invalid(
    stub: Stub, request_: pb.ModelInferRequest, fragment: str
) -> None:
    """Not RESOURCE_EXHAUSTED (which clients may retry): the client sent a few bytes that do
    not match its shape, as Triton answers."""
    code, details, seconds = _timed_error(stub, request_)
    assert code == INVALID, details
    assert fragment in details
    assert seconds < QUICK_S


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 4, b"\0" * 400])
def test_raw_contents_longer_than_the_shape_are_invalid(stub: Stub, extra: bytes) -> None:
    """Neither accepted nor cut to the shape: 2 rows declared, more bytes sent."""
    sizes = np.array([[1800.0], [900.0]], dtype=np.float32).tobytes()
    code, details = rpc_error(stub.ModelInfer, _raw([2, 1], sizes + extra))
    assert code == INVALID
    assert f"raw contents hold {8 + len(extra)} bytes" in details and "needs 8" in details
    # The same bytes without the extra are fine.
    assert prices(stub.ModelInfer(_raw([2, 1], sizes))) == pytest.approx([360.0, 180.0])


def test_contents_over_the_tensor_limit_are_resource_exhausted(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    """Content that really exceeds max_tensor_bytes keeps RESOURCE_EXHAUSTED."""
    with (
        aio.service(seeded_repository(), AffineBackend(), max_tensor_bytes=1024) as service,
        _channel(service) as channel,
    ):
        stub = Stub(channel)
        sizes = np.full((512, 1), 1800.0, dtype=np.float32)
        for request in (_raw([512, 1], sizes.tobytes()), _typed([512, 1], sizes.ravel())):
            code, details = rpc_error(stub.ModelInfer, request)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_tensor_bytes" in details
        assert prices(stub.ModelInfer(price_request(1800.0))) == pytest.approx([360.0])


# ---- checked against the model before decoding ----


def test_wrong_datatype_is_refused_before_decoding(stub: Stub, bystander: Stub) -> None:
    """19 MiB of BYTES (5M empty strings) for an FP32 model took seconds to decode before
    the datatype was checked."""
    raw = b"\0" * (19 << 20)
    request = _raw([len(raw) // 4, 1], raw, datatype="BYTES")
    started = time.monotonic()
    call = stub.ModelInfer.future(request, timeout=WAIT_S)
    latencies = _ready_latencies(bystander, lambda: not call.done(), at_least=1)
    error = cast(grpc.Call, call.exception())
    assert error is not None and error.code() == INVALID
    assert "must be FP32, got BYTES" in (error.details() or "")
    assert time.monotonic() - started < QUICK_S * 2  # 19 MiB travel and parse too
    assert max(latencies) < QUICK_S


def test_big_typed_contents_are_decoded_off_the_event_loop(stub: Stub, bystander: Stub) -> None:
    """8M typed values (32 MiB) decode in about a second: on a thread, a chunk at a time, so
    other clients' calls are answered meanwhile. The answer is still right."""
    sizes = np.arange(1, 8_000_001, dtype=np.float32)
    request = _typed([sizes.size, 1], sizes.tolist())
    call = stub.ModelInfer.future(request, timeout=WAIT_S)
    latencies = _ready_latencies(bystander, lambda: not call.done())
    answer = prices(call.result())
    assert len(answer) == sizes.size
    ends = [0, 1, 4_000_000, -1]
    expected = prices(stub.ModelInfer(price_request(*sizes[ends].tolist())))
    assert [answer[i] for i in ends] == expected
    assert max(latencies) < QUICK_S


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_rows_over_max_batch_size_are_refused_before_decoding(
    request: pytest.FixtureRequest, batched: bool
) -> None:
    """Triton's max_batch_size bounds the rows of every request, batched or not, and is
    checked on the header: 8M typed rows are refused without being decoded."""
    stub = cast(Stub, request.getfixturevalue("batching" if batched else "bounded"))
    config = stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL)).config
    assert config.max_batch_size == MAX_BATCH
    assert config.HasField("dynamic_batching") == batched
    assert len(prices(stub.ModelInfer(price_request(*[1800.0] * MAX_BATCH)))) == MAX_BATCH
    code, details = rpc_error(stub.ModelInfer, price_request(*[1800.0] * (MAX_BATCH + 1)))
    assert code == INVALID
    assert f"{MAX_BATCH + 1} rows" in details and "max_batch_size" in details
    rows = 8_000_000
    code, details, seconds = _timed_error(stub, _typed([rows, 1], [1.0] * rows))
    assert code == INVALID and f"{rows} rows" in details
    assert seconds < QUICK_S


# ---- Triton statistics ----


def _model_stats(stub: Stub) -> pb.ModelStatistics:
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL))
    (stats,) = response.model_stats
    return stats


def _durations(stats: pb.ModelStatistics) -> dict[str, tuple[int, int]]:
    infer = stats.inference_stats
    return {
        name: (getattr(infer, name).count, getattr(infer, name).ns)
        for name in ("success", "queue", "compute_input", "compute_infer", "compute_output")
    }


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_statistics_count_every_compute_phase_once_per_request(
    stub: Stub, batching: Stub, batched: bool
) -> None:
    """perf_analyzer stops with "Server side statistics compute counts must be the same."
    unless compute_input, compute_infer and compute_output count alike."""
    client = batching if batched else stub
    before = _durations(_model_stats(client))
    calls = 6
    for index in range(calls):
        client.ModelInfer(price_request(1800.0, typed=index % 2 == 1))
    for response in client.ModelStreamInfer(iter([price_request(900.0)] * 2)):
        assert not response.error_message
    stats = _model_stats(client)
    after = _durations(stats)
    for name, (count, ns) in after.items():
        assert count - before[name][0] == calls + 2, name
        if name != "queue" or batched:
            assert ns > before[name][1], name
    for batch in stats.batch_stats:
        counts = {batch.compute_input.count, batch.compute_infer.count}
        assert counts == {batch.compute_output.count}, batch
        assert batch.compute_infer.ns > 0 and batch.compute_input.ns > 0
        assert batch.compute_output.ns > 0
    executions = sum(batch.compute_infer.count for batch in stats.batch_stats)
    assert executions == stats.execution_count
