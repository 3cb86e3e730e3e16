"""`TWINSERVE_TRACING` with a real OTLP endpoint: a service process and a gateway process export
their spans over OTLP/gRPC (the SDK's own exporter, configured by the standard OTEL_* variables)
to a collector this test runs; one request through the gateway arrives as one trace, the
service's span a child of the gateway's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from tests.integration.conftest import WAIT_S
from tests.integration.oip import SEED_MODEL, eventually, price_request, prices, rpc_error

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
    reason="the `otel` extra (opentelemetry-proto) is not installed",
)
pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    reason="the `otel` extra (the OTLP/gRPC exporter) is not installed",
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

MODULE = "tests.integration.fake_service"
UNSET = trace_pb2.Status.StatusCode.STATUS_CODE_UNSET
ERROR = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
INFER = "/inference.GRPCInferenceService/ModelInfer"
ENV = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    name: str
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    attributes: dict[str, object]
    status: int  # trace_pb2.Status.StatusCode
    events: tuple[str, ...]


def _value(value: Any) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector(trace_service.TraceServiceServicer):
    """The trace half of an OpenTelemetry collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id,
                            span_id=span.span_id,
                            parent_span_id=span.parent_span_id,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code,
                            events=tuple(event.name for event in span.events),
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, name: str) -> list[Span]:
        with self._lock:
            return [span for span in self._spans if span.name == name]


@dataclass
class Stack:
    collector: Collector
    service: Process
    gateway: Process


@pytest.fixture(scope="module")
def stack(seeded_repository: Callable[[], Path]) -> Iterator[Stack]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        # Export within a fifth of a second (the batch processor's default waits 5 s).
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    repository = seeded_repository()
    service = launch(
        "fake",
        MODULE,
        ["--model-repository", str(repository)],
        env={**ENV, **otel, "TWINSERVE_TRACING": "true"},
    )
    try:
        gateway = launch(
            "gateway",
            "gateway",
            env={
                **otel,
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
                "TWINSERVE_GATEWAY_TRACING": "true",
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": service.address,
            },
        )
        try:
            yield Stack(collector, service, gateway)
        finally:
            gateway.stop()
    finally:
        service.stop()
        server.stop(grace=None)


def test_a_request_through_the_gateway_arrives_as_one_trace(stack: Stack) -> None:
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(price_request(1800.0, id="otlp-1"), timeout=10)
    assert prices(response) == pytest.approx([360.0])

    def both_exported() -> bool:
        services = {span.service for span in stack.collector.spans("ModelInfer")}
        return {"gateway", MODULE} <= services

    assert eventually(both_exported, timeout=WAIT_S), stack.collector.spans("ModelInfer")
    spans = stack.collector.spans("ModelInfer")
    (outer,) = [span for span in spans if span.service == "gateway"]
    (inner,) = [span for span in spans if span.service == MODULE]
    server = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
    # The gateway's span starts the trace (the client sent no traceparent) ...
    assert outer.kind == server
    assert outer.parent_span_id == b""
    assert len(outer.trace_id) == 16 and outer.trace_id != bytes(16)
    # ... and the service's span is its child, in the same trace, through the traceparent
    # the gateway's channel sent along.
    assert inner.kind == server
    assert inner.trace_id == outer.trace_id
    assert inner.parent_span_id == outer.span_id
    assert inner.span_id != outer.span_id
    for span in (outer, inner):
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.method"] == INFER
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        assert span.status == UNSET and span.events == ()


def test_each_request_is_a_trace_of_its_own(stack: Stack) -> None:
    before = {span.trace_id for span in stack.collector.spans("ModelInfer")}
    with grpc.insecure_channel(stack.gateway.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for size in (1000.0, 2000.0):
            assert prices(stub.ModelInfer(price_request(size), timeout=10)) == pytest.approx(
                [0.2 * size]
            )

    def new_traces() -> dict[bytes, list[Span]]:
        traces: dict[bytes, list[Span]] = {}
        for span in stack.collector.spans("ModelInfer"):
            if span.trace_id not in before:
                traces.setdefault(span.trace_id, []).append(span)
        return traces

    assert eventually(
        lambda: len(new_traces()) == 2 and all(len(s) == 2 for s in new_traces().values()),
        timeout=WAIT_S,
    ), new_traces()
    for spans in new_traces().values():
        assert sorted(span.service for span in spans) == sorted(["gateway", MODULE])


def _trace_of(collector: Collector, count: int, before: set[bytes]) -> list[Span]:
    """The spans of the one new trace, once it has `count` of them."""

    def new() -> list[Span]:
        return [s for s in collector.spans("ModelInfer") if s.trace_id not in before]

    assert eventually(lambda: len(new()) >= count, timeout=WAIT_S), new()
    spans = new()
    assert len({span.trace_id for span in spans}) == 1, spans
    return spans


def test_a_client_mistake_is_recorded_as_its_status_not_as_an_error(stack: Stack) -> None:
    before = {span.trace_id for span in stack.collector.spans("ModelInfer")}
    request = price_request(1800.0)
    request.inputs[0].datatype = "INT32"  # the model takes FP32
    with grpc.insecure_channel(stack.gateway.address) as channel:
        code, _ = rpc_error(
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request, timeout=10
        )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    spans = _trace_of(stack.collector, 2, before)
    assert sorted(span.service for span in spans) == sorted(["gateway", MODULE])
    for span in spans:
        # OpenTelemetry's gRPC conventions: a server span's status stays unset for client
        # errors; the code is an attribute. No exception event: the abort that sends a
        # status is not an exception of the server.
        assert span.attributes["rpc.grpc.status_code"] == code.value[0], span
        assert span.status == UNSET, span
        assert span.events == (), span


# Last in the module: it unloads the model from the service.
def test_a_server_side_failure_marks_the_spans_as_errors(stack: Stack) -> None:
    with grpc.insecure_channel(stack.service.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=SEED_MODEL), timeout=10
        )
    before = {span.trace_id for span in stack.collector.spans("ModelInfer")}
    with grpc.insecure_channel(stack.gateway.address) as channel:
        code, _ = rpc_error(
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer, price_request(1800.0), timeout=10
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    spans = _trace_of(stack.collector, 2, before)
    assert {span.service for span in spans} == {"gateway", MODULE}
    for span in spans:
        assert span.attributes["rpc.grpc.status_code"] == code.value[0], span
        assert span.status == ERROR, span
