"""OpenTelemetry (the `otel` extra): one request through the gateway is one trace, the
service's span a child of the gateway's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.rpc import tracing
from tests.integration.oip import price_request, prices

sdk_trace = pytest.importorskip(
    "opentelemetry.sdk.trace", reason="the `otel` extra is not installed"
)
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")


def test_a_request_through_the_gateway_is_one_trace(
    aio: Any, seeded_repository: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    # What tracing.configure installs, without touching the process-wide provider.
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    with (
        aio.service(seeded_repository(), AffineBackend(framework="tensorflow")) as service,
        aio.gateway(tensorflow_url=f"127.0.0.1:{service.port}") as gateway,
        grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx([360.0])
    spans = [span for span in exporter.get_finished_spans() if span.name == "ModelInfer"]
    assert len(spans) == 2
    child, parent = sorted(spans, key=lambda span: span.parent is None)
    assert parent.parent is None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent.span_id == parent.context.span_id
    assert child.attributes["rpc.method"] == "/inference.GRPCInferenceService/ModelInfer"


def test_tracing_is_off_by_default() -> None:
    assert not tracing.enabled()
    assert tracing.client_interceptors() == []
