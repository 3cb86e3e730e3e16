"""Routing policies, shadow traffic and the comparison call, through the gateway in front of
two fake framework services whose answers differ: tensorflow prices 1800 sq ft at 360
(0.2 x), pytorch at 540 (0.3 x)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from devtools import cli
from gateway import policy
from gateway.policy import PolicyError
from gateway.server import Gateway, create_server
from gateway.settings import GatewaySettings
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.training.seed import seed_repository

from .oip import (
    HOUSE_PRICE_OUTPUT,
    SEED_MODEL,
    eventually,
    price_request,
    prices,
    rpc_error,
    train_slope,
)

TF_PRICE, PT_PRICE = 360.0, 540.0
TORCH_ONLY = "torch_only"
OK = pytest.approx


@dataclass
class Backends:
    tensorflow: Service
    pytorch: Service
    # Holds the pytorch service's predict calls while cleared.
    pytorch_gate: threading.Event

    def urls(self) -> dict[str, str]:
        return {
            "tensorflow_url": f"127.0.0.1:{self.tensorflow.port}",
            "pytorch_url": f"127.0.0.1:{self.pytorch.port}",
        }


@pytest.fixture(scope="module")
def backends(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    tf_repository = tmp_path_factory.mktemp("tensorflow")
    pt_repository = tmp_path_factory.mktemp("pytorch")
    assert seed_repository(ModelRepository(tf_repository), AffineBackend(framework="tensorflow"))
    assert train_slope(pt_repository, SEED_MODEL, 0.3, AffineBackend(framework="pytorch")) == 1
    assert train_slope(pt_repository, TORCH_ONLY, 0.5, AffineBackend(framework="pytorch")) == 1
    gate = threading.Event()
    gate.set()
    with ExitStack() as stack:
        tensorflow = stack.enter_context(
            aio.service(tf_repository, AffineBackend(framework="tensorflow"))
        )
        pytorch = stack.enter_context(
            aio.service(
                pt_repository, AffineBackend(framework="pytorch", gate=gate), inline_max_us=0
            )
        )
        stack.callback(gate.set)
        yield Backends(tensorflow, pytorch, gate)


@dataclass
class Front:
    gateway: Gateway
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def comparison(self) -> cpb_grpc.ComparisonServiceStub:
        return cpb_grpc.ComparisonServiceStub(self.channel)

    def served_by(self, request: pb.ModelInferRequest, **kwargs: Any) -> str:
        return _framework(self.stub.ModelInfer(request, timeout=10, **kwargs))

    def shadow_stats(self, model: str = SEED_MODEL) -> cpb.ModelShadowStats:
        (stats,) = self.comparison.GetShadowStats(
            cpb.ShadowStatsRequest(model_name=model), timeout=5
        ).models
        return stats


@contextmanager
def _front(aio: Any, backends: Backends | None = None, **settings: Any) -> Iterator[Front]:
    urls = backends.urls() if backends is not None else {}
    with (
        aio.gateway(**{**urls, "health_interval_s": 0.2, **settings}) as gateway,
        grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        yield Front(gateway, channel)


def _policy_file(tmp_path: Path, policies: dict[str, Any]) -> Path:
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(policies))
    return path


def _rewrite(path: Path, text: str) -> None:
    # Written beside and renamed, as a deployment tool would; the watcher sees a new inode.
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def _framework(response: pb.ModelInferResponse) -> str:
    return response.parameters["framework"].string_param


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def _held(gate: threading.Event) -> Iterator[None]:
    gate.clear()
    try:
        yield
    finally:
        gate.set()


# ---- explicit choice, defaults ----


def test_explicit_choice_wins_over_split_and_shadow(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    policies = {
        SEED_MODEL: {"split": {"pytorch": 1}},
        TORCH_ONLY: {"serve": "pytorch", "shadow": "tensorflow"},
    }
    with _front(aio, backends, routing_file=_policy_file(tmp_path, policies)) as front:
        assert front.served_by(price_request(1800.0)) == "pytorch"
        tf = (("x-framework", "tensorflow"),)
        assert front.served_by(price_request(1800.0), metadata=tf) == "tensorflow"
        asked = price_request(1800.0, parameters={"framework": "tensorflow"})
        assert front.served_by(asked) == "tensorflow"
        # An explicit choice is not shadowed either.
        pt = price_request(1.0, model=TORCH_ONLY, parameters={"framework": "pytorch"})
        assert front.served_by(pt) == "pytorch"
        # A shadowed call after it is counted (the count is taken before the answer goes
        # back); the explicit one before it must not have been.
        assert front.served_by(price_request(1.0, model=TORCH_ONLY)) == "pytorch"
        assert eventually(lambda: front.shadow_stats(TORCH_ONLY).mirrored >= 1)
        stats = front.shadow_stats(TORCH_ONLY)
        assert (stats.served, stats.mirrored) == (1, 1)
        # The runtime parameter passes through unchanged.
        onnx = price_request(1800.0, parameters={"framework": "tensorflow", "runtime": "onnx"})
        response = front.stub.ModelInfer(onnx, timeout=10)
        assert response.parameters["runtime"].string_param == "onnx"
        assert prices(response) == OK([TF_PRICE], abs=1e-2)


def test_per_model_default_from_settings_and_file(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    path = _policy_file(tmp_path, {TORCH_ONLY: {"framework": "pytorch"}})
    settings = {"routing_file": path, "model_frameworks": {SEED_MODEL: "pytorch"}}
    with _front(aio, backends, **settings) as front:
        assert front.served_by(price_request(1800.0)) == "pytorch"
        assert front.served_by(price_request(1.0, model=TORCH_ONLY)) == "pytorch"
        # Calls without a request body follow the policy too.
        meta = front.stub.ModelMetadata(pb.ModelMetadataRequest(name=TORCH_ONLY), timeout=5)
        assert meta.name == TORCH_ONLY
    # The file's entry replaces the settings' for the same model.
    path = _policy_file(tmp_path, {SEED_MODEL: {"framework": "tensorflow"}})
    with _front(aio, backends, **settings) as front:
        assert front.served_by(price_request(1800.0)) == "tensorflow"


# ---- weighted split ----


def test_canary_split_is_deterministic_per_request_id(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    policies = {SEED_MODEL: {"split": {"tensorflow": 90, "pytorch": 10}}}
    with _front(aio, backends, routing_file=_policy_file(tmp_path, policies)) as front:

        def routed(ids: list[str]) -> dict[str, str]:
            # Sent 32 at a time (the gateway bounds calls in flight per backend).
            answers = []
            for start in range(0, len(ids), 32):
                calls = [
                    front.stub.ModelInfer.future(price_request(1800.0, id=i), timeout=30)
                    for i in ids[start : start + 32]
                ]
                answers.extend(call.result() for call in calls)
            for answer in answers:  # every answer comes from the framework it names
                price = TF_PRICE if _framework(answer) == "tensorflow" else PT_PRICE
                assert prices(answer) == OK([price], abs=1e-3)
            return {answer.id: _framework(answer) for answer in answers}

        ids = [f"request-{i}" for i in range(2000)]
        first = routed(ids)
        share = sum(framework == "pytorch" for framework in first.values()) / len(ids)
        assert 0.07 <= share <= 0.13
        # The same id always goes to the same framework, by unary call as by stream.
        again = ids[::-1][:200]
        assert routed(again) == {i: first[i] for i in again}
        requests = [price_request(1800.0, id=request_id) for request_id in ids[:50]]
        streamed = front.stub.ModelStreamInfer(iter(requests), timeout=30)
        assert {a.infer_response.id: _framework(a.infer_response) for a in streamed} == {
            i: first[i] for i in ids[:50]
        }


def test_split_without_request_ids_is_random(aio: Any, backends: Backends, tmp_path: Path) -> None:
    policies = {SEED_MODEL: {"split": {"tensorflow": 1, "pytorch": 1}}}
    with _front(aio, backends, routing_file=_policy_file(tmp_path, policies)) as front:
        requests = [price_request(1800.0) for _ in range(200)]
        answers = list(front.stub.ModelStreamInfer(iter(requests), timeout=30))
        frameworks = [_framework(a.infer_response) for a in answers]
        assert 50 < frameworks.count("pytorch") < 150


# ---- the routing file, reloaded ----


def test_a_changed_policy_file_is_picked_up_without_restart(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    path = _policy_file(tmp_path, {SEED_MODEL: {"framework": "tensorflow"}})
    with _front(aio, backends, routing_file=path, routing_poll_s=0.05) as front:
        assert front.served_by(price_request(1800.0)) == "tensorflow"
        _rewrite(path, json.dumps({SEED_MODEL: {"framework": "pytorch"}}))
        assert eventually(lambda: front.served_by(price_request(1800.0)) == "pytorch")
        # Rewritten in place (same inode) works as well.
        path.write_text(json.dumps({SEED_MODEL: {"split": {"tensorflow": 1, "pytorch": 0}}}))
        assert eventually(lambda: front.served_by(price_request(1800.0)) == "tensorflow")


@pytest.mark.parametrize(
    "case",
    [
        ("{not json", "json"),
        (json.dumps({SEED_MODEL: {"split": {"tensorflow": -1}}}), "negative"),
        (json.dumps({SEED_MODEL: {"framework": "jax"}}), "framework"),
        (json.dumps({SEED_MODEL: {"serve": "pytorch"}}), "go together"),
        (json.dumps({SEED_MODEL: {"framework": "pytorch", "split": {"pytorch": 1}}}), "one"),
        (json.dumps({SEED_MODEL: {"frameworks": "pytorch"}}), "frameworks"),
    ],
    ids=["not-json", "negative-weight", "unknown-framework", "serve-alone", "two-kinds", "typo"],
)
def test_a_bad_policy_file_keeps_the_last_good_one(
    aio: Any,
    backends: Backends,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    *,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str],
) -> None:
    bad, fragment = case
    looks = _count_looks(monkeypatch)
    path = _policy_file(tmp_path, {SEED_MODEL: {"framework": "pytorch"}})
    with (
        caplog.at_level(logging.ERROR, logger="gateway.policy"),
        _front(aio, backends, routing_file=path, routing_poll_s=0.05) as front,
    ):
        _rewrite(path, bad)
        assert eventually(lambda: any(str(path) in r.getMessage() for r in caplog.records))
        (record,) = caplog.records
        assert fragment in record.getMessage().lower()
        # Logged once, not on every look: the watcher looks three more times in silence.
        seen = looks()
        assert eventually(lambda: looks() >= seen + 3)
        assert len(caplog.records) == 1
        assert front.served_by(price_request(1800.0)) == "pytorch"
        # Removing the file keeps the policy too (the watcher reports it, once); a good file
        # again is applied.
        path.unlink()
        assert eventually(lambda: len(caplog.records) == 2)
        assert "cannot read" in caplog.records[1].getMessage()
        assert front.served_by(price_request(1800.0)) == "pytorch"
        seen = looks()
        assert eventually(lambda: looks() >= seen + 3)
        assert len(caplog.records) == 2
        _rewrite(path, json.dumps({SEED_MODEL: {"framework": "tensorflow"}}))
        assert eventually(lambda: front.served_by(price_request(1800.0)) == "tensorflow")


def _count_looks(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Counts the routing-file watcher's looks at the file (each one stats it), so a test
    can wait for looks instead of sleeping through them."""
    count = 0
    real = policy._signature

    def counted(path: Path) -> tuple[int, int, int]:
        nonlocal count
        count += 1
        return real(path)

    monkeypatch.setattr(policy, "_signature", counted)
    return lambda: count


def test_a_bad_policy_file_at_start_stops_the_start(aio: Any, tmp_path: Path) -> None:
    settings = GatewaySettings(port=0, tensorflow_url="127.0.0.1:1", routing_file=tmp_path / "no")
    with pytest.raises(PolicyError, match="cannot read"):
        aio.run(create_server(settings))
    bad = _policy_file(tmp_path, {SEED_MODEL: {"split": {}}})
    with pytest.raises(PolicyError, match="zero"):
        aio.run(create_server(settings.model_copy(update={"routing_file": bad})))


# ---- shadow ----

SHADOW = {SEED_MODEL: {"serve": "tensorflow", "shadow": "pytorch"}}


def test_shadow_answers_from_the_serving_framework_and_records_the_disagreement(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    with _front(aio, backends, routing_file=_policy_file(tmp_path, SHADOW)) as front:
        for size in (1800.0, 1800.0, 1000.0, 1800.0, 1800.0):
            response = front.stub.ModelInfer(price_request(size), timeout=5)
            assert _framework(response) == "tensorflow"
            assert prices(response) == OK([size * 0.2], abs=1e-3)
        assert eventually(lambda: front.gateway.shadow.stats(SEED_MODEL).compared == 5)

        stats = front.gateway.shadow.stats(SEED_MODEL)  # readable in process...
        assert (stats.served, stats.mirrored, stats.dropped, stats.failed) == (5, 5, 0, 0)
        assert stats.last_max_abs_diff == OK(180.0, abs=1e-3)

        remote = front.shadow_stats()  # ...and over gRPC
        assert (remote.serve, remote.shadow) == ("tensorflow", "pytorch")
        assert (remote.served, remote.mirrored, remote.compared) == (5, 5, 5)
        assert (remote.dropped, remote.failed, remote.in_flight, remote.incomparable) == (0,) * 4
        assert remote.last_max_abs_diff == OK(180.0, abs=1e-3)
        assert remote.worst_max_abs_diff == OK(180.0, abs=1e-3)
        histogram = remote.max_abs_diff
        assert histogram.count == 5
        assert histogram.sum == OK(4 * 180.0 + 100.0, abs=1e-2)
        assert sum(histogram.counts) == 5
        assert histogram.counts[list(histogram.upper_bounds).index(1000.0)] == 4
        assert histogram.upper_bounds[-1] == float("inf")
        assert remote.serve_latency_ms.count == remote.shadow_latency_ms.count == 5
        assert remote.last_serve_latency_ms > 0
        assert remote.last_shadow_latency_ms > 0

        everything = front.comparison.GetShadowStats(cpb.ShadowStatsRequest(), timeout=5)
        assert [m.model_name for m in everything.models] == [SEED_MODEL]
        assert front.shadow_stats("never_shadowed").served == 0


def test_a_held_shadow_never_delays_the_client_and_excess_shadows_are_dropped(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    settings = {
        "routing_file": _policy_file(tmp_path, SHADOW),
        "shadow_max_in_flight": 2,
        "shadow_timeout_s": 300.0,  # held until the gate opens, however slow the machine
    }
    with _front(aio, backends, **settings) as front, _held(backends.pytorch_gate):
        for _ in range(6):
            # Its shadow is held: a client that waited for it would miss its own deadline.
            response = front.stub.ModelInfer(price_request(1800.0), timeout=5)
            assert prices(response) == OK([TF_PRICE], abs=1e-3)
        stats = front.shadow_stats()
        assert (stats.served, stats.mirrored, stats.dropped, stats.in_flight) == (6, 2, 4, 2)
        assert (stats.failed, stats.compared) == (0, 0)


def test_a_held_shadow_ends_at_its_own_deadline_as_a_failure(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    settings = {"routing_file": _policy_file(tmp_path, SHADOW), "shadow_timeout_s": 0.2}
    with _front(aio, backends, **settings) as front, _held(backends.pytorch_gate):
        response = front.stub.ModelInfer(price_request(1800.0), timeout=5)
        assert prices(response) == OK([TF_PRICE], abs=1e-3)
        assert eventually(lambda: front.shadow_stats().failed == 1)
        stats = front.shadow_stats()
        assert (stats.served, stats.mirrored, stats.in_flight, stats.compared) == (1, 1, 0, 0)


def test_a_failing_shadow_target_never_fails_the_client(
    aio: Any, backends: Backends, tmp_path: Path
) -> None:
    settings = {
        "tensorflow_url": f"127.0.0.1:{backends.tensorflow.port}",
        "pytorch_url": f"127.0.0.1:{_closed_port()}",  # nothing listens there
        "routing_file": _policy_file(tmp_path, SHADOW),
    }
    with _front(aio, None, **settings) as front:
        for _ in range(3):
            response = front.stub.ModelInfer(price_request(1800.0), timeout=5)
            assert prices(response) == OK([TF_PRICE], abs=1e-3)
        assert eventually(lambda: front.shadow_stats().failed == 3)
        assert front.shadow_stats().compared == 0


def test_a_shadow_target_without_the_model(aio: Any, backends: Backends, tmp_path: Path) -> None:
    # torch_only exists in pytorch alone: its shadow call to tensorflow fails (NOT_FOUND).
    policies = {TORCH_ONLY: {"serve": "pytorch", "shadow": "tensorflow"}}
    with _front(aio, backends, routing_file=_policy_file(tmp_path, policies)) as front:
        response = front.stub.ModelInfer(price_request(2.0, model=TORCH_ONLY), timeout=5)
        assert prices(response) == OK([1.0], abs=1e-3)
        assert eventually(lambda: front.shadow_stats(TORCH_ONLY).failed == 1)


# ---- Compare ----


def _compare(
    front: Front, request: pb.ModelInferRequest, *targets: tuple[str, str]
) -> cpb.CompareResponse:
    message = cpb.CompareRequest(
        infer_request=request.SerializeToString(),
        targets=[cpb.Target(framework=f, runtime=r) for f, r in targets],
    )
    return front.comparison.Compare(message, timeout=10)


@pytest.fixture(scope="module")
def front(aio: Any, backends: Backends) -> Iterator[Front]:
    with _front(aio, backends) as started:
        yield started


@pytest.mark.parametrize("typed", [False, True], ids=["raw-outputs", "typed-outputs"])
def test_compare_answers_both_frameworks_and_their_difference(front: Front, typed: bool) -> None:
    request = price_request(1800.0, 1000.0, id="cmp")
    if typed:
        request.parameters["binary_data_output"].bool_param = False
    answer = _compare(front, request)
    assert answer.model_name == SEED_MODEL
    assert [(r.target.framework, r.target.runtime) for r in answer.results] == [
        ("tensorflow", "native"),
        ("pytorch", "native"),
    ]
    for result, slope in zip(answer.results, (0.2, 0.3), strict=True):
        assert result.status.code == 0
        assert result.status.name == "OK"
        assert result.model_version == "1"
        assert result.latency_ms > 0
        (output,) = result.outputs
        assert (output.name, output.datatype, list(output.shape)) == (
            HOUSE_PRICE_OUTPUT,
            "FP32",
            [2, 1],
        )
        assert list(output.values) == OK([1800.0 * slope, 1000.0 * slope], abs=1e-3)
    (difference,) = answer.differences
    assert (difference.output, difference.first, difference.second) == (HOUSE_PRICE_OUTPUT, 0, 1)
    assert difference.HasField("max_abs_diff")
    assert difference.max_abs_diff == OK(180.0, abs=1e-3)


def test_compare_named_targets_and_runtimes(front: Front) -> None:
    answer = _compare(
        front, price_request(1800.0), ("tensorflow", "native"), ("tensorflow", "onnx")
    )
    assert [r.target.runtime for r in answer.results] == ["native", "onnx"]
    assert all(r.status.code == 0 for r in answer.results)
    (difference,) = answer.differences
    assert difference.max_abs_diff < 1e-2


def test_compare_with_one_target_failing(front: Front, backends: Backends) -> None:
    # A runtime the pytorch service does not register fails that target only.
    answer = _compare(front, price_request(1800.0), ("tensorflow", ""), ("pytorch", "tflite"))
    ok, failed = answer.results
    assert ok.status.code == 0
    assert [o.values[0] for o in ok.outputs] == OK([TF_PRICE], abs=1e-3)
    assert (failed.status.code, failed.status.name) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "INVALID_ARGUMENT",
    )
    assert "unknown runtime 'tflite'" in failed.status.message
    assert not failed.outputs
    assert not answer.differences


def test_compare_with_a_target_service_down(aio: Any, backends: Backends) -> None:
    urls = {
        "tensorflow_url": f"127.0.0.1:{backends.tensorflow.port}",
        "pytorch_url": f"127.0.0.1:{_closed_port()}",
    }
    with _front(aio, None, **urls) as front:
        ok, down = _compare(front, price_request(1800.0)).results
        assert ok.status.name == "OK"
        assert ok.outputs[0].values[0] == OK(TF_PRICE, abs=1e-3)
        assert (down.target.framework, down.status.name) == ("pytorch", "UNAVAILABLE")
        assert "pytorch service" in down.status.message
    # A framework the gateway is not configured with: the call names the configured set.
    with _front(aio, None, tensorflow_url=urls["tensorflow_url"]) as front:
        code, details = rpc_error(
            _compare, front, price_request(1800.0), ("tensorflow", ""), ("pytorch", "")
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown framework 'pytorch' (this gateway serves 'tensorflow')" in details
        # By default, only the frameworks it has.
        assert [r.target.framework for r in _compare(front, price_request(1.0)).results] == [
            "tensorflow"
        ]


def test_compare_held_target_meets_the_client_deadline(front: Front, backends: Backends) -> None:
    message = cpb.CompareRequest(infer_request=price_request(1800.0).SerializeToString())
    with _held(backends.pytorch_gate):
        # Long enough for tensorflow's answer on a slow machine; pytorch never answers.
        answer = front.comparison.Compare(message, timeout=2.0)
    tf, pt = answer.results
    assert tf.status.name == "OK"
    assert pt.status.name == "DEADLINE_EXCEEDED"


def _with_framework_param() -> bytes:
    return price_request(1800.0, parameters={"framework": "pytorch"}).SerializeToString()


def _bad_raw_length() -> bytes:
    request = price_request(1800.0)
    request.raw_input_contents[0] = b"\x00" * 5
    return request.SerializeToString()


_REQUEST = price_request(1800.0).SerializeToString()


@pytest.mark.parametrize(
    ("infer_request", "targets", "fragment"),
    [
        (b"", [], "empty"),
        (b"\xff\xff\xff", [], "not a serialized"),
        (pb.ModelInferRequest(id="x").SerializeToString(), [], "names no model"),
        (_with_framework_param(), [], "'framework' parameter"),
        (_bad_raw_length(), [], "5 bytes"),
        (_REQUEST, [("jax", "")], "unknown framework 'jax'"),
        (_REQUEST, [("", "onnx")], "no framework"),
        (_REQUEST, [("pytorch", ""), ("pytorch", "")], "twice"),
        (_REQUEST, [("pytorch", str(i)) for i in range(9)], "at most 8"),
    ],
    ids=[
        "empty",
        "garbage",
        "no-model",
        "framework-param",
        "bad-raw-length",
        "unknown-framework",
        "target-without-framework",
        "duplicate-target",
        "too-many-targets",
    ],
)
def test_bad_compare_requests(
    front: Front, infer_request: bytes, targets: list[tuple[str, str]], fragment: str
) -> None:
    message = cpb.CompareRequest(
        infer_request=infer_request,
        targets=[cpb.Target(framework=f, runtime=r) for f, r in targets],
    )
    code, details = rpc_error(front.comparison.Compare, message, timeout=5)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details


def test_cli_compare_prints_both_answers_and_the_difference(
    front: Front, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--url", f"127.0.0.1:{front.gateway.port}", "compare", "1800"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "tensorflow/native" in out and "1800 -> 360.00" in out
    assert "pytorch/native" in out and "1800 -> 540.00" in out
    assert "max abs difference" in out and "180" in out
