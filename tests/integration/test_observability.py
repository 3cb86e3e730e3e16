"""Metrics scraped over HTTP from a service and the gateway after real gRPC traffic, the
structured per-call log records, and the resource limits (tensor bytes, message size,
concurrent calls, streams per connection)."""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.logs import JsonFormatter
from serving.training.seed import seed_repository
from tests.integration.oip import (
    SEED_MODEL,
    eventually,
    price_request,
    prices,
    rpc_error,
    train_slope,
)
from tests.integration.training import train_request

INFER = "/inference.GRPCInferenceService/ModelInfer"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of `name` over the samples whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


@contextmanager
def _stub(port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _metrics_port(service: Any) -> int:
    assert service.metrics_server is not None
    return int(service.metrics_server.port)


def test_service_metrics_after_traffic(aio: Any, seeded_repository: Callable[[], Path]) -> None:
    with (
        aio.service(seeded_repository(), AffineBackend(), metrics_port=0) as service,
        _stub(service.port) as stub,
    ):
        for size in (1000.0, 1800.0, 2000.0):
            stub.ModelInfer(price_request(size), timeout=5)
        stub.ModelInfer(price_request(1.0, 2.0, 3.0, 4.0), timeout=5)
        bad = price_request(1800.0)
        bad.inputs[0].datatype = "FP64"
        bad.raw_input_contents[0] = np.zeros(1, np.float64).tobytes()
        assert rpc_error(stub.ModelInfer, bad, timeout=5)[0] == grpc.StatusCode.INVALID_ARGUMENT
        unknown = price_request(1.0, model="no_such_model")
        assert rpc_error(stub.ModelInfer, unknown, timeout=5)[0] == grpc.StatusCode.NOT_FOUND

        samples = scrape(_metrics_port(service))
    version = {"model": SEED_MODEL, "version": "1", "framework": "fake", "device": "cpu"}
    requests = "twinserve_inference_requests_total"
    assert value(samples, requests, **version, runtime="native", code="OK") == 4
    assert value(samples, requests, **version, code="INVALID_ARGUMENT") == 1
    # An unknown model never becomes a label value; the gRPC metrics count the call.
    assert value(samples, requests, model="no_such_model") == 0
    assert (
        value(samples, "twinserve_grpc_server_handled_total", method=INFER, code="NOT_FOUND") == 1
    )
    assert value(samples, "twinserve_grpc_server_handled_total", method=INFER, code="OK") == 4
    for histogram in ("request", "queue", "compute"):
        name = f"twinserve_inference_{histogram}_duration_seconds_count"
        assert value(samples, name, **version, runtime="native") == 4
    assert value(samples, "twinserve_inference_request_duration_seconds_sum", **version) > 0
    # Rows per framework call: three of 1, one of 4.
    assert value(samples, "twinserve_inference_batch_size_count", **version) == 4
    assert value(samples, "twinserve_inference_batch_size_sum", **version) == 7
    assert value(samples, "twinserve_inference_batch_size_bucket", **version, le="1.0") == 3
    assert value(samples, "twinserve_inference_requests_in_flight", model=SEED_MODEL) == 0
    state = {"model": SEED_MODEL, "version": "1", "framework": "fake"}
    assert value(samples, "twinserve_model_state", **state, state="READY") == 1
    assert value(samples, "twinserve_model_state", **state, state="UNAVAILABLE") == 0
    assert value(samples, "twinserve_model_load_duration_seconds", **state) > 0
    assert value(samples, "twinserve_training_jobs", framework="fake", state="RUNNING") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_in_flight_gauge_and_training_metrics(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    gate = threading.Event()
    gate.set()  # open for warm-up
    backend = AffineBackend(gate=gate)
    with ExitStack() as stack:
        stack.callback(gate.set)
        service = stack.enter_context(
            aio.service(seeded_repository(), backend, metrics_port=0, inline_max_us=0)
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        gate.clear()
        held = stub.ModelInfer.future(price_request(1800.0), timeout=10)
        port = _metrics_port(service)
        in_flight = "twinserve_inference_requests_in_flight"
        assert eventually(lambda: value(scrape(port), in_flight, model=SEED_MODEL) == 1)
        assert value(scrape(port), "twinserve_grpc_server_in_flight", method=INFER) == 1
        gate.set()
        assert prices(held.result()) == pytest.approx([360.0])
        assert value(scrape(port), in_flight, model=SEED_MODEL) == 0

        training = tpb_grpc.TrainingServiceStub(channel)
        events = list(training.Train(train_request("fresh"), timeout=30))
        assert events[-1].state == tpb.JOB_STATE_SUCCEEDED, events[-1]
        samples = scrape(port)
    assert value(samples, "twinserve_training_jobs", framework="fake", state="SUCCEEDED") == 1
    assert value(samples, "twinserve_training_last_loss", model="fresh", framework="fake") >= 0
    assert (
        "twinserve_training_last_loss",
        frozenset({("model", "fresh"), ("framework", "fake")}),
    ) in samples


def test_gateway_metrics_backends_retries_and_shadow(
    aio: Any, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    tf_repository = tmp_path_factory.mktemp("tensorflow")
    pt_repository = tmp_path_factory.mktemp("pytorch")
    assert seed_repository(ModelRepository(tf_repository), AffineBackend(framework="tensorflow"))
    assert train_slope(pt_repository, SEED_MODEL, 0.3, AffineBackend(framework="pytorch")) == 1
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({SEED_MODEL: {"serve": "tensorflow", "shadow": "pytorch"}}))
    with (
        aio.service(tf_repository, AffineBackend(framework="tensorflow")) as tensorflow,
        aio.service(pt_repository, AffineBackend(framework="pytorch")) as pytorch,
        aio.gateway(
            tensorflow_url=f"127.0.0.1:{tensorflow.port}",
            pytorch_url=f"127.0.0.1:{pytorch.port}",
            routing_file=routing,
            metrics_port=0,
            health_interval_s=0.2,
        ) as gateway,
        _stub(gateway.port) as stub,
    ):
        for _ in range(3):
            assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx(
                [360.0]
            )
        assert rpc_error(stub.ModelInfer, price_request(1.0, model="nope"), timeout=5)[0] == (
            grpc.StatusCode.NOT_FOUND
        )
        assert gateway.shadow is not None
        assert eventually(
            lambda: gateway.shadow is not None and gateway.shadow.stats(SEED_MODEL).compared == 3
        )
        assert gateway.metrics_server is not None
        samples = scrape(gateway.metrics_server.port)
    for framework, address in (("tensorflow", tensorflow.port), ("pytorch", pytorch.port)):
        replica = {"framework": framework, "replica": f"127.0.0.1:{address}"}
        assert value(samples, "twinserve_gateway_replica_healthy", **replica) == 1
        assert value(samples, "twinserve_gateway_replica_in_flight", **replica) == 0
        assert value(samples, "twinserve_gateway_upstream_retries_total", framework=framework) == 0
        assert value(samples, "twinserve_gateway_upstream_rejected_total", framework=framework) == 0
    # Three served and one unknown model from tensorflow; three mirrors to pytorch.
    assert value(samples, "twinserve_gateway_upstream_requests_total", framework="tensorflow") == 4
    assert value(samples, "twinserve_gateway_upstream_requests_total", framework="pytorch") == 3
    shadow = {"model": SEED_MODEL}
    assert value(samples, "twinserve_gateway_shadow_compared_total", **shadow) == 3
    assert value(samples, "twinserve_gateway_shadow_dropped_total", **shadow) == 0
    # 0.2 x 1800 vs 0.3 x 1800: 180 apart, in the (100, 1000] bucket.
    assert value(samples, "twinserve_gateway_shadow_disagreement_count", **shadow) == 3
    assert value(samples, "twinserve_gateway_shadow_disagreement_bucket", **shadow, le="100.0") == 0
    assert (
        value(samples, "twinserve_gateway_shadow_disagreement_bucket", **shadow, le="1000.0") == 3
    )
    assert value(samples, "twinserve_gateway_shadow_disagreement_sum", **shadow) == pytest.approx(
        540, abs=0.1
    )
    assert value(samples, "twinserve_gateway_shadow_shadow_latency_seconds_count", **shadow) == 3
    assert value(samples, "twinserve_grpc_server_handled_total", method=INFER, code="OK") == 3
    assert (
        value(samples, "twinserve_grpc_server_handled_total", method=INFER, code="NOT_FOUND") == 1
    )


# ---- structured logs ----


def test_one_log_record_per_error_and_per_request_at_debug(
    aio: Any, seeded_repository: Callable[[], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="twinserve.calls")
    with aio.service(seeded_repository(), AffineBackend()) as service, _stub(service.port) as stub:
        stub.ModelInfer(price_request(1800.0, id="good-1"), timeout=5)
        bad = price_request(1800.0, id="bad-1")
        bad.inputs[0].shape[:] = [1, 2]
        rpc_error(stub.ModelInfer, bad, timeout=5)
        rpc_error(
            stub.ModelInfer,
            price_request(1.0, model="nope"),
            timeout=5,
            metadata=(("x-request-id", "from-metadata"),),
        )
    records = [
        r for r in caplog.records if r.name == "twinserve.calls" and "ModelInfer" in r.getMessage()
    ]
    by_id = {getattr(r, "request_id", ""): r for r in records}
    good, bad_record, unknown = by_id["good-1"], by_id["bad-1"], by_id["from-metadata"]
    assert good.levelno == logging.DEBUG
    assert bad_record.levelno == unknown.levelno == logging.WARNING
    assert (good.code, bad_record.code, unknown.code) == ("OK", "INVALID_ARGUMENT", "NOT_FOUND")  # type: ignore[attr-defined]
    assert (good.model, good.model_version, good.framework) == (SEED_MODEL, "1", "fake")  # type: ignore[attr-defined]
    assert good.latency_ms > 0  # type: ignore[attr-defined]
    assert "shape" in bad_record.detail  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(bad_record))
    assert {
        k: line[k] for k in ("level", "method", "code", "model", "request_id", "framework")
    } == {
        "level": "WARNING",
        "method": "ModelInfer",
        "code": "INVALID_ARGUMENT",
        "model": SEED_MODEL,
        "request_id": "bad-1",
        "framework": "fake",
    }
    assert isinstance(line["latency_ms"], float)


# ---- resource limits ----


def test_a_declared_tensor_over_the_limit_is_refused_before_decoding(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    with (
        aio.service(seeded_repository(), AffineBackend(), max_tensor_bytes=1024) as service,
        _stub(service.port) as stub,
    ):
        assert prices(stub.ModelInfer(price_request(*[1.0] * 256), timeout=5)) == pytest.approx(
            [0.2] * 256, abs=1e-3
        )
        code, details = rpc_error(stub.ModelInfer, price_request(*[1.0] * 257), timeout=5)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1028 bytes" in details and "max_tensor_bytes" in details
        # Declared, not sent: a huge shape with no data to match is the client's mistake
        # (INVALID_ARGUMENT, as Triton answers), not a limit a retry could get past.
        huge = price_request(1.0)
        huge.inputs[0].shape[:] = [2**40, 1]
        code, details = rpc_error(stub.ModelInfer, huge, timeout=5)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "[1099511627776, 1]" in details
        typed = price_request(*[1.0] * 300, typed=True)
        assert rpc_error(stub.ModelInfer, typed, timeout=5)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx([360.0])


def test_an_oversized_message_is_refused_with_a_clear_error(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    with (
        aio.service(seeded_repository(), AffineBackend(), max_message_bytes=64 * 1024) as service,
        _stub(service.port) as stub,
    ):
        code, details = rpc_error(stub.ModelInfer, price_request(*[1.0] * 20_000), timeout=5)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details
        assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx([360.0])


def _held_calls(stub: pb_grpc.GRPCInferenceServiceStub, count: int) -> list[Any]:
    return [stub.ModelInfer.future(price_request(1800.0), timeout=20) for _ in range(count)]


def test_calls_past_the_concurrency_limit_are_refused_at_once(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    gate = threading.Event()
    gate.set()  # open for warm-up
    with ExitStack() as stack:
        stack.callback(gate.set)
        service: Service = stack.enter_context(
            aio.service(
                seeded_repository(),
                AffineBackend(gate=gate),
                max_concurrent_rpcs=2,
                inline_max_us=0,
                inference_threads=4,
            )
        )
        stub = stack.enter_context(_stub(service.port))
        # Waves: the bound holds after calls were refused (grpc.aio's own limiter once did not).
        for _ in range(3):
            gate.clear()
            held = _held_calls(stub, 2)
            assert eventually(lambda: value_in_flight(service) == 2)
            code, details = rpc_error(stub.ModelInfer, price_request(1.0), timeout=5)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit" in details
            # Health stays answerable under the bound.
            with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            gate.set()
            for call in held:
                assert prices(call.result()) == pytest.approx([360.0])


def value_in_flight(service: Service) -> float:
    assert service.registry is not None
    sample = service.registry.get_sample_value("twinserve_grpc_server_in_flight", {"method": INFER})
    return sample or 0.0


def test_streams_per_connection_are_bounded(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    gate = threading.Event()
    gate.set()  # open for warm-up
    with ExitStack() as stack:
        stack.callback(gate.set)
        service: Service = stack.enter_context(
            aio.service(
                seeded_repository(),
                AffineBackend(gate=gate),
                max_streams_per_connection=2,
                inline_max_us=0,
                inference_threads=4,
            )
        )
        stub = stack.enter_context(_stub(service.port))
        gate.clear()
        held = _held_calls(stub, 3)
        assert eventually(lambda: value_in_flight(service) == 2)
        # The third call waits in its client for a stream; another connection gets in.
        # (A channel of its own: channels to one target share connections by default.)
        with (
            ThreadPoolExecutor(1) as pool,
            grpc.insecure_channel(
                f"127.0.0.1:{service.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel,
        ):
            other = pb_grpc.GRPCInferenceServiceStub(channel)
            extra = pool.submit(other.ModelInfer, price_request(1.0), timeout=20)
            assert eventually(lambda: value_in_flight(service) == 3)
            assert not any(call.done() for call in held)
            gate.set()
            assert prices(extra.result()) == pytest.approx([0.2], abs=1e-3)
        for call in held:
            assert prices(call.result()) == pytest.approx([360.0])


# ---- the Grafana dashboard ----

DASHBOARD = Path(__file__).parents[2] / "deploy" / "monitoring" / "grafana-dashboard.json"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exposed_names(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES)
    return names


def test_the_dashboard_asks_only_for_metrics_that_exist(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    wanted: set[str] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            wanted.update(re.findall(r"\b((?:twinserve|process)_[a-z_]+)\b", target["expr"]))
    assert len(wanted) > 20
    with (
        aio.service(seeded_repository(), AffineBackend(), metrics_port=0) as service,
        aio.gateway(tensorflow_url=f"127.0.0.1:{service.port}", metrics_port=0) as gateway,
    ):
        exposed = _exposed_names(_metrics_port(service)) | _exposed_names(_metrics_port(gateway))
    # GPU memory is exposed only by a backend on a GPU.
    missing = {name for name in wanted - exposed if not name.startswith("twinserve_device_")}
    assert not missing


def test_deeply_nested_messages_are_invalid_argument(
    aio: Any, seeded_repository: Callable[[], Path]
) -> None:
    """Unknown fields nest without bound on the wire (groups, length-delimited fields): the
    parser's recursion limit refuses them, and the call is INVALID_ARGUMENT, not a crash."""
    group = bytes([(15 << 3) | 3]) * 5000 + bytes([(15 << 3) | 4]) * 5000
    delimited = b"x"
    for _ in range(500):
        delimited = bytes([(15 << 3) | 2]) + _varint(len(delimited)) + delimited
    with (
        aio.service(seeded_repository(), AffineBackend(framework="tensorflow")) as service,
        aio.gateway(tensorflow_url=f"127.0.0.1:{service.port}") as gateway,
    ):
        for port in (service.port, gateway.port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                raw = channel.unary_unary(INFER, request_serializer=bytes)
                # Nested groups exceed the parser's recursion limit; nested length-delimited
                # unknown fields are kept as bytes unparsed, leaving a request with no model.
                for message, fragment in (
                    (group, "could not be parsed"),
                    (delimited, "names no model"),
                ):
                    code, details = rpc_error(raw, message, timeout=5)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
                    assert fragment in details
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert prices(stub.ModelInfer(price_request(1800.0), timeout=5)) == pytest.approx(
                    [360.0]
                )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
