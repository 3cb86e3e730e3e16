"""Client text cannot forge or flood the logs, nor blow up its own error status: requests
with control characters and a 4 MiB model name through a real service and the gateway."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server import Gateway
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.rpc.logs import JsonFormatter, TextFormatter, printable

from .oip import eventually, price_request, rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub
TIMEOUT = 10.0
HUGE = 4 * 1024 * 1024
# A newline and a CR that would start a forged record, an ANSI sequence that would clear the
# operator's terminal, NEL and LINE SEPARATOR (line breaks to some viewers), a NUL.
FORGED = "req-1\n2026-11-30 03:00:00,000 ERROR admin: forged\r\x1b[2J\x85\u2028\x00end"
BREAKS = ("\n", "\r", "\x1b", "\x85", "\u2028", "\x00")
PLAIN = logging.Formatter("%(levelname)s %(name)s: %(message)s")
BIG_CHANNEL = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A stream error echoes the model name (and id) in its infer_response.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@pytest.fixture(scope="module")
def service(aio: Any, seeded_repository: Callable[[], Path]) -> Iterator[Service]:
    with aio.service(seeded_repository(), AffineBackend(framework="tensorflow")) as started:
        yield started


@pytest.fixture(scope="module")
def gateway(aio: Any, service: Service) -> Iterator[Gateway]:
    with aio.gateway(tensorflow_url=f"127.0.0.1:{service.port}") as front:
        yield front


@pytest.fixture(scope="module", params=["service", "gateway"])
def port(request: pytest.FixtureRequest) -> int:
    return int(request.getfixturevalue(request.param).port)


@pytest.fixture
def writers(request: pytest.FixtureRequest) -> int:
    """How many servers write a call record for one call: the gateway and its service."""
    return 2 if request.node.callspec.params["port"] == "gateway" else 1


@pytest.fixture
def stub(port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=BIG_CHANNEL) as channel:
        yield Stub(channel)


def _call_records(
    caplog: pytest.LogCaptureFixture,
    method: str,
    count: int,
    mine: Callable[[logging.LogRecord], bool] = lambda record: True,
) -> list[logging.LogRecord]:
    """The call records of `method` that `mine` says this test caused, once `count` of them are
    written. Filtering matters: a call's second record (the gateway's upstream service writes
    its own) can land after the test that caused it has ended, in the next test's capture."""
    name = "twinserve.calls" if method != "ModelStreamInfer" else "serving.rpc.interceptor"

    def found() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.name == name and getattr(record, "method", "") == method and mine(record)
        ]

    assert eventually(lambda: len(found()) >= count), caplog.records
    return found()


def _one_line(text: str) -> bool:
    return not any(char in text for char in BREAKS)


def test_a_forged_id_stays_on_one_line(
    stub: pb_grpc.GRPCInferenceServiceStub, writers: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    code, _ = rpc_error(stub.ModelInfer, price_request(1800.0, model="nope", id=FORGED))
    assert code is grpc.StatusCode.NOT_FOUND
    records = _call_records(caplog, "ModelInfer", writers)
    # The gateway's own record, and its service's: one record each, never two lines.
    assert len([r for r in records if "forged" in r.getMessage()]) == len(records) == writers
    for record in records:
        for formatted in (PLAIN.format(record), TextFormatter().format(record)):
            assert _one_line(formatted), formatted
            assert "\\n2026-11-30 03:00:00,000 ERROR admin: forged\\r\\x1b[2J" in formatted
        assert _one_line(vars(record)["request_id"])
        line = JsonFormatter().format(record)
        assert _one_line(line) and json.loads(line)["request_id"] == printable(FORGED)


def test_a_huge_model_name_is_not_found_with_a_bounded_status_and_log(
    stub: pb_grpc.GRPCInferenceServiceStub, writers: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the client got RESOURCE_EXHAUSTED 'received metadata size exceeds hard limit'
    (a 4 MiB status detail), and the log 8 MiB for the one call."""
    caplog.set_level(logging.WARNING)
    name = "m" * HUGE
    for call, request in (
        (stub.ModelInfer, price_request(1800.0, model=name)),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name=name)),
    ):
        code, details = rpc_error(call, request, timeout=TIMEOUT)
        assert code is grpc.StatusCode.NOT_FOUND, details[:200]
        quoted = f"unknown model '{name}'"
        assert details == f"{quoted[:1024]}…(+{len(quoted) - 1024} chars)"
    for method in ("ModelInfer", "ModelMetadata"):
        records = _call_records(caplog, method, writers, _is_huge)
        assert len(records) == writers
        for record in records:
            assert vars(record)["model"].endswith(f"…(+{HUGE - 256} chars)")
            for formatted in (PLAIN.format(record), JsonFormatter().format(record)):
                assert len(formatted) < 4096, len(formatted)


def _is_huge(record: logging.LogRecord) -> bool:
    return str(vars(record).get("model", "")).startswith("m" * 64)


def test_stream_errors_are_bounded_and_on_one_line(
    stub: pb_grpc.GRPCInferenceServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    requests = [
        price_request(1800.0, model="nope", id=FORGED),
        price_request(1800.0, model="m" * HUGE, id="big"),
        price_request(1800.0, id="fine"),
    ]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=TIMEOUT))
    assert [bool(answer.error_message) for answer in answers] == [True, True, False]
    assert len(answers[1].error_message) < 1100
    records = _call_records(caplog, "ModelStreamInfer", 2)
    assert len(records) == 2
    for record in records:
        formatted = PLAIN.format(record)
        assert _one_line(formatted) and len(formatted) < 4096, formatted[:300]


def test_the_formatters_guard_every_other_log_line() -> None:
    """Log lines outside the call records (a job's dataset path, a shadow's model name)."""
    logger = logging.getLogger("tests.log_safety")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "queued job on %s", (FORGED * 10_000,), None
    )
    text = TextFormatter().format(record)
    assert _one_line(text) and len(text) < 4096 * 4 + 200
    line = JsonFormatter().format(record)
    assert _one_line(line) and len(json.loads(line)["message"]) < 4200
