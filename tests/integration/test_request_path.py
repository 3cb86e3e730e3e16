"""The request path's choices, through gRPC: models are warmed up before they are offered;
cheap calls run on the event loop, costly or large ones on the inference threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from serving.app.settings import ServiceSettings
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import AioThread
from tests.integration.oip import SEED_MODEL, price_request, prices


class CallLog:
    """Stands in for AffineBackend's gate: records which thread each model call ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def wait(self) -> None:
        self.threads.append(threading.current_thread().name)


def test_a_model_is_warmed_up_before_it_is_offered(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    log = CallLog()
    with aio.service(seeded_repository(), AffineBackend(gate=log)) as service:
        # Started means ready: the model ran (warm-up, then timed calls) before any request.
        warmed = len(log.threads)
        assert warmed >= 2
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL), timeout=5).ready
            assert prices(stub.ModelInfer(price_request(1800), timeout=5)) == [360.0]
        assert len(log.threads) == warmed + 1


@pytest.mark.parametrize(
    ("inline_max_us", "rows", "on_a_thread"),
    [
        (10_000_000, 1, False),  # cheap: on the event loop
        (10_000_000, 64, True),  # too many rows to hold the loop for
        (0, 1, True),  # inline calls turned off
    ],
)
def test_cheap_calls_run_inline_and_others_on_the_inference_threads(
    aio: AioThread,
    seeded_repository: Callable[[], Path],
    inline_max_us: int,
    rows: int,
    on_a_thread: bool,
) -> None:
    log = CallLog()
    backend = AffineBackend(gate=log)
    with (
        aio.service(seeded_repository(), backend, inline_max_us=inline_max_us) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        log.threads.clear()
        answer = prices(stub.ModelInfer(price_request(*[1800.0] * rows), timeout=5))
        assert answer == [360.0] * rows
    (thread,) = log.threads
    assert thread.startswith("infer") is on_a_thread, thread


def test_framework_threads_are_shared_out_over_workers() -> None:
    # A fixed count wins; 0 shares the cores out (at least one each); one worker keeps the
    # framework's own default (0).
    assert ServiceSettings(framework_threads=3, workers=4).threads_per_worker() == 3
    assert ServiceSettings(workers=1).threads_per_worker() == 0
    cores = ServiceSettings(workers=0).worker_count()
    assert cores >= 1
    assert ServiceSettings(workers=cores * 2).threads_per_worker() == 1
