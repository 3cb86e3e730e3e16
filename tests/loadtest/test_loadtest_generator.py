"""The load generator against a real gRPC server (tests.loadtest.stub_server, a subprocess)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from devtools.stack import launch
from loadtest import ClientPool, LoadResult, OutputClose, closed_loop
from serving.pb import inference_pb2 as pb

RIGHT = OutputClose.of("price_k", np.array([[360.0]]), 1.0)


def request(model: str) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    message.raw_input_contents.append(np.array([[1800.0]], np.float32).tobytes())
    return message


def slower_than(result: LoadResult, ms: float) -> int:
    """How many recorded calls took at least `ms` milliseconds."""
    return sum(
        step.count_added_in_this_iter_step
        for step in result.latency.get_recorded_iterator()
        if step.value_iterated_to >= ms * 1000
    )


def fresh(prefix: str) -> str:
    """A model name the server has not counted calls for yet."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process = launch("stub", "tests.loadtest.stub_server")
    try:
        yield process.address
    finally:
        process.stop()


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    with ClientPool(processes=2) as clients:
        yield clients


def test_open_loop_latencies_include_a_stall(server: str, pool: ClientPool) -> None:
    # 200 calls/s; the 200th call (0.5 s into the measured window) stalls the server 1 s.
    # Every call meant to leave during the stall waits for it, and its latency runs from
    # when it was meant to leave: ~200 of ~600 measured calls are late by 0..1 s.
    result = pool.open_loop(
        server, request("stall-200-open"), rate=200, duration_s=3.0, warmup_s=0.5, checker=RIGHT
    )
    # Lower bounds only, which a slower machine can only raise: the ~100 calls meant to leave
    # in the stall's first half are each >= 0.5 s late, however fast the client is.
    figures = result.latency_ms()
    assert result.ok >= 550 and result.failures == 0
    assert figures["max"] >= 950
    assert figures["p90"] >= 300, figures
    assert slower_than(result, 500) >= 90, figures
    # Yet the stall is not spread over everyone (a schedule that slipped by the stall would
    # make every later call ~1 s late): the median stays under half the worst, on any machine
    # that can send at the rate at all.
    assert figures["p50"] < figures["max"] / 2, figures


def test_closed_loop_hides_the_same_stall(server: str) -> None:
    # What coordinated omission looks like: one slow call, the rest unaffected, because no
    # call is sent while the only one in flight waits.
    result = closed_loop(
        server,
        request("stall-10-closed"),
        concurrency=1,
        duration_s=2.0,
        warmup_s=0.0,
        checker=RIGHT,
        processes=0,
    )
    # Counted, not a percentile: on a slow machine fewer calls fit in the window and a p99
    # would reach the stall; the count of slow calls does not depend on speed.
    figures = result.latency_ms()
    assert figures["max"] >= 950
    assert slower_than(result, 500) == 1, figures


@pytest.mark.parametrize("processes", [0, 2])
def test_errors_are_counted_by_code(server: str, pool: ClientPool, processes: int) -> None:
    run = pool.closed_loop if processes else ClientPool(processes=0).closed_loop
    result = run(server, request(fresh("fail")), concurrency=3, requests=1000, warmup_s=0.0)
    assert result.requests == 1000
    assert result.errors == {"RESOURCE_EXHAUSTED": 100, "UNAVAILABLE": 200}
    assert result.error_examples["UNAVAILABLE"] == "backend away"
    assert result.ok == 700 == result.latency.get_total_count()
    assert result.wrong_answers == 0


def test_open_loop_counts_errors_too(server: str, pool: ClientPool) -> None:
    result = pool.open_loop(
        server, request(fresh("fail")), rate=500, requests=500, warmup_s=0.0, checker=RIGHT
    )
    assert result.errors == {"RESOURCE_EXHAUSTED": 50, "UNAVAILABLE": 100}
    assert result.ok == 350


def test_a_wrong_answer_is_flagged(server: str, pool: ClientPool) -> None:
    result = pool.closed_loop(
        server, request(fresh("wrong")), concurrency=2, requests=500, warmup_s=0.0, checker=RIGHT
    )
    assert result.wrong_answers == 10
    assert result.ok == 490 == result.latency.get_total_count()
    assert result.wrong_example is not None and "off by 1.5" in result.wrong_example
    assert result.failures == 10


def test_warmup_is_excluded_and_figures_are_reported(server: str, pool: ClientPool) -> None:
    result = pool.closed_loop(
        server,
        request(fresh("ok")).SerializeToString(),
        concurrency=4,
        duration_s=1.0,
        warmup_s=0.3,
        checker=RIGHT,
    )
    assert result.ok > 50 and result.failures == 0
    assert result.window_s == 1.0
    assert result.throughput == result.ok / 1.0
    assert len(result.client_cpu) == 2 and all(0 < cpu < 4 for cpu in result.client_cpu)
    summary = result.to_dict()
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max", "mean"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_an_unreachable_target_counts_unavailable() -> None:
    result = closed_loop(
        "127.0.0.1:1",
        request("ok"),
        concurrency=1,
        requests=3,
        warmup_s=0.0,
        timeout_s=1.0,
        processes=0,
    )
    assert result.errors == {"UNAVAILABLE": 3}


def test_bad_arguments_are_refused() -> None:
    pool = ClientPool(processes=0)
    with pytest.raises(ValueError, match="exactly one"):
        pool.closed_loop("127.0.0.1:1", b"", duration_s=1.0, requests=1)
    with pytest.raises(ValueError, match="rate"):
        pool.open_loop("127.0.0.1:1", b"", rate=0, requests=1)
