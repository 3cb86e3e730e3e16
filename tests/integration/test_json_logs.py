"""`TWINSERVE_LOG_FORMAT=json` through a real service process: everything it writes to stderr,
from start to drain, is one JSON object a line, and each call's record carries the fields a
log pipeline filters on (method, code, latency, request id, model, version, framework)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import WAIT_S
from tests.integration.oip import SEED_MODEL, eventually, price_request, prices, rpc_error

MODULE = "tests.integration.fake_service"
ENV = {
    "TWINSERVE_LOG_FORMAT": "json",
    # DEBUG: successful calls are logged too (and whatever else the libraries say, which
    # must come out as JSON as well).
    "TWINSERVE_LOG_LEVEL": "DEBUG",
    "TWINSERVE_REPOSITORY_POLL_S": "0",
}


class LoggingService:
    def __init__(self, process: Process, log: Path) -> None:
        self.process = process
        self.log = log

    def records(self) -> list[dict[str, Any]]:
        """The complete lines written so far, parsed; a line that is not a JSON object fails."""
        text = self.log.read_text(encoding="utf-8")
        lines = text.splitlines()
        if not text.endswith("\n"):
            lines = lines[:-1]  # still being written
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line!r}")
            assert isinstance(record, dict), line
            records.append(record)
        return records

    def call_record(self, request_id: str) -> dict[str, Any] | None:
        found = [r for r in self.records() if r.get("request_id") == request_id]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, seeded_repository: Callable[[], Path]
) -> Iterator[LoggingService]:
    work = tmp_path_factory.mktemp("json-logs")
    repository = seeded_repository()
    log = work / "service.log"
    with log.open("wb") as stderr:
        process = launch(
            "fake", MODULE, ["--model-repository", str(repository)], env=ENV, stderr=stderr
        )
    try:
        yield LoggingService(process, log)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub(service: LoggingService) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(service.process.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _common_keys(record: dict[str, Any]) -> None:
    assert set(record) >= {"time", "level", "logger", "message"}
    assert record["time"].endswith("Z") and "T" in record["time"]


def test_a_failed_call_is_one_warning_record_with_its_fields(
    service: LoggingService, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    request = price_request(1800, version="1", id="json-bad-1")
    request.inputs[0].datatype = "INT32"  # the model takes FP32
    code, details = rpc_error(stub.ModelInfer, request, timeout=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    assert eventually(lambda: service.call_record("json-bad-1") is not None, timeout=WAIT_S)
    record = service.call_record("json-bad-1")
    assert record is not None
    _common_keys(record)
    assert record["level"] == "WARNING"
    assert record["logger"] == "twinserve.calls"
    assert record["method"] == "ModelInfer"
    assert record["code"] == "INVALID_ARGUMENT"
    assert isinstance(record["latency_ms"], float) and 0 <= record["latency_ms"] < 5000
    assert record["model"] == SEED_MODEL
    assert record["model_version"] == "1"
    assert record["framework"] == "fake"
    assert record["detail"] == details
    assert "json-bad-1" in record["message"] and "INVALID_ARGUMENT" in record["message"]


def test_a_successful_call_is_one_debug_record_with_the_metadata_request_id(
    service: LoggingService, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # No `id` in the request: the record takes the x-request-id metadata.
    response = stub.ModelInfer(
        price_request(1800), timeout=5, metadata=[("x-request-id", "json-ok-1")]
    )
    assert prices(response) == pytest.approx([360.0])

    assert eventually(lambda: service.call_record("json-ok-1") is not None, timeout=WAIT_S)
    record = service.call_record("json-ok-1")
    assert record is not None
    _common_keys(record)
    assert (record["level"], record["method"], record["code"]) == ("DEBUG", "ModelInfer", "OK")
    assert record["model"] == SEED_MODEL
    assert record["model_version"] == "1"  # from the answer, which names the version
    assert record["framework"] == "fake"
    assert isinstance(record["latency_ms"], float)
    assert "detail" not in record


# Last in the module: it stops the service to read its log to the end.
def test_every_line_from_start_to_drain_is_json(
    service: LoggingService, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    code, _ = rpc_error(
        stub.ModelInfer, price_request(1800, model="no_such_model", id="json-404"), timeout=5
    )
    assert code == grpc.StatusCode.NOT_FOUND
    stub.ModelConfig(pb.ModelConfigRequest(name=SEED_MODEL), timeout=5)
    assert service.process.stop() == 0  # drained: its shutdown lines are in the file too
    records = service.records()
    assert service.log.read_text(encoding="utf-8").endswith("\n")
    for record in records:
        _common_keys(record)
    messages = [r["message"] for r in records]
    assert any("service listening on" in m for m in messages), messages
    assert any(m.startswith("draining") for m in messages), messages
    unknown = [r for r in records if r.get("request_id") == "json-404"]
    assert [(r["code"], r["model"]) for r in unknown] == [("NOT_FOUND", "no_such_model")]
