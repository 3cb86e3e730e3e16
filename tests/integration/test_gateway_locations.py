"""The gateway finds where a model lives: a request without a framework for a model that only
one framework serves goes there; a model both serve follows the rules (explicit > policy >
default); one loaded after the gateway started is found on its first request; one nobody
serves is NOT_FOUND quickly while other clients' calls go on. Two fake services: tensorflow
holds house_price (0.2 x), pytorch house_price (0.3 x) and torch_only (0.5 x)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.server import Gateway
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.seed import seed_repository

from .oip import SEED_MODEL, price_request, prices, rpc_error, train_slope

Stub = pb_grpc.GRPCInferenceServiceStub
OK = pytest.approx
TORCH_ONLY = "torch_only"
TENSORFLOW = (("x-framework", "tensorflow"),)
PYTORCH = (("x-framework", "pytorch"),)


@dataclass
class Services:
    tensorflow: Service
    pytorch: Service
    pytorch_repository: Path

    def urls(self) -> dict[str, str]:
        return {
            "tensorflow": f"127.0.0.1:{self.tensorflow.port}",
            "pytorch": f"127.0.0.1:{self.pytorch.port}",
        }


@pytest.fixture(scope="module")
def services(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tf_repository = tmp_path_factory.mktemp("tensorflow")
    pt_repository = tmp_path_factory.mktemp("pytorch")
    assert seed_repository(ModelRepository(tf_repository), AffineBackend(framework="tensorflow"))
    assert train_slope(pt_repository, SEED_MODEL, 0.3, AffineBackend(framework="pytorch")) == 1
    assert train_slope(pt_repository, TORCH_ONLY, 0.5, AffineBackend(framework="pytorch")) == 1
    # No polling of the repositories: a model appears only when a test loads it.
    with ExitStack() as stack:
        tensorflow = stack.enter_context(
            aio.service(tf_repository, AffineBackend(framework="tensorflow"), repository_poll_s=0)
        )
        pytorch = stack.enter_context(
            aio.service(pt_repository, AffineBackend(framework="pytorch"), repository_poll_s=0)
        )
        yield Services(tensorflow, pytorch, pt_repository)


@dataclass
class Front:
    gateway: Gateway
    stub: Stub

    def served_by(self, request: pb.ModelInferRequest, **kwargs: Any) -> str:
        response = self.stub.ModelInfer(request, timeout=10, **kwargs)
        return response.parameters["framework"].string_param

    @property
    def rounds(self) -> int:
        assert self.gateway.locations is not None
        return self.gateway.locations.rounds


@contextmanager
def _front(aio: Any, frameworks: dict[str, str], **settings: Any) -> Iterator[Front]:
    with (
        aio.gateway(frameworks=frameworks, **{"health_interval_s": 0.2, **settings}) as gateway,
        grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
    ):
        yield Front(gateway, Stub(channel))


def test_a_model_only_the_second_framework_serves_is_found_there(
    aio: Any, services: Services
) -> None:
    with _front(aio, services.urls()) as front:
        stub = front.stub
        response = stub.ModelInfer(price_request(2.0, model=TORCH_ONLY), timeout=10)
        assert response.parameters["framework"].string_param == "pytorch"
        assert prices(response) == OK([1.0], abs=1e-3)
        # Calls without a request body follow the same resolution.
        name = TORCH_ONLY
        assert stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=5).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=5).name == name
        config = stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=5).config
        assert config.parameters["framework"].string_value == "pytorch"
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=5)
        assert [(s.name, s.inference_count) for s in stats.model_stats] == [(name, 1)]
        # A stream is routed per request the same way.
        answers = list(stub.ModelStreamInfer(iter([price_request(2.0, model=name)]), timeout=10))
        assert answers[0].infer_response.parameters["framework"].string_param == "pytorch"
        # An explicit choice still wins: tensorflow does not have it.
        code, details = rpc_error(
            stub.ModelInfer, price_request(2.0, model=name), metadata=TENSORFLOW
        )
        assert code is grpc.StatusCode.NOT_FOUND
        assert f"'{name}'" in details


def test_a_model_both_serve_follows_the_rules(aio: Any, services: Services, tmp_path: Path) -> None:
    with _front(aio, services.urls()) as front:
        assert front.served_by(price_request(1800.0)) == "tensorflow"  # the default
        assert front.served_by(price_request(1800.0), metadata=PYTORCH) == "pytorch"
        ready = pb.ModelReadyRequest(name=SEED_MODEL)
        assert front.stub.ModelReady(ready, metadata=TENSORFLOW, timeout=5).ready
    with _front(aio, services.urls(), default_framework="pytorch") as front:
        assert front.served_by(price_request(1800.0)) == "pytorch"
    # Served by two frameworks, neither the default: the default's rule cannot apply, so the
    # first configured of them (the pytorch service stands in for an ONNX one too).
    three = {**services.urls(), "onnx": services.urls()["pytorch"]}
    with _front(aio, three) as front:
        pytorch, onnx = front.gateway.upstreams[1], front.gateway.upstreams[2]
        front.served_by(price_request(1.0, model=TORCH_ONLY))
        assert (pytorch.requests, onnx.requests) == (1, 0)
    with _front(aio, three, default_framework="onnx") as front:
        pytorch, onnx = front.gateway.upstreams[1], front.gateway.upstreams[2]
        front.served_by(price_request(1.0, model=TORCH_ONLY))
        assert (pytorch.requests, onnx.requests) == (0, 1)
    # A per-model rule wins over where the model lives, even one that sends it nowhere.
    rules = {SEED_MODEL: "pytorch", TORCH_ONLY: "tensorflow"}
    with _front(aio, services.urls(), model_frameworks=rules) as front:
        assert front.served_by(price_request(1800.0)) == "pytorch"
        code, _ = rpc_error(front.stub.ModelInfer, price_request(1.0, model=TORCH_ONLY))
        assert code is grpc.StatusCode.NOT_FOUND


def test_a_model_loaded_after_the_gateway_started_is_found_on_its_first_request(
    aio: Any, services: Services
) -> None:
    # No periodic round during the test: only the request's own miss can find the model.
    with _front(aio, services.urls(), health_interval_s=60.0) as front:
        rounds = front.rounds
        assert train_slope(services.pytorch_repository, "late", 0.5, AffineBackend()) == 1
        with grpc.insecure_channel(f"127.0.0.1:{services.pytorch.port}") as channel:
            Stub(channel).RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="late"), timeout=10
            )
        response = front.stub.ModelInfer(price_request(4.0, model="late"), timeout=10)
        assert response.parameters["framework"].string_param == "pytorch"
        assert prices(response) == OK([2.0], abs=1e-3)
        assert front.rounds == rounds + 1
        # Found now: the next request costs no look.
        assert front.served_by(price_request(4.0, model="late")) == "pytorch"
        assert front.rounds == rounds + 1
        # Unloaded through the gateway: looked at again before the answer, so the next
        # request is the default's NOT_FOUND, not pytorch's.
        front.stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="late"), metadata=PYTORCH, timeout=10
        )
        code, details = rpc_error(front.stub.ModelInfer, price_request(4.0, model="late"))
        assert (code, "'late'" in details) == (grpc.StatusCode.NOT_FOUND, True)
        assert "tensorflow" not in front.gateway.locations.serving("late")  # type: ignore[union-attr]


def test_an_unknown_model_is_not_found_quickly_and_costs_few_looks(
    aio: Any, services: Services
) -> None:
    with _front(aio, services.urls(), health_interval_s=60.0) as front:
        rounds = front.rounds

        def unknown(i: int) -> tuple[grpc.StatusCode, str, float]:
            started = time.monotonic()
            code, details = rpc_error(
                front.stub.ModelInfer, price_request(1.0, model=f"ghost{i % 3}"), timeout=10
            )
            return code, details, time.monotonic() - started

        with ThreadPoolExecutor(16) as pool:
            flood = [pool.submit(unknown, i) for i in range(48)]
            # A bystander's model, found where it lives, answers while the flood goes on.
            for _ in range(10):
                assert front.served_by(price_request(2.0, model=TORCH_ONLY)) == "pytorch"
            results = [future.result(timeout=30) for future in flood]
        for i, (code, details, took) in enumerate(results):
            assert code is grpc.StatusCode.NOT_FOUND
            assert f"'ghost{i % 3}'" in details
            assert took < 5.0
        # Misses share rounds: far fewer looks than requests.
        assert 1 <= front.rounds - rounds <= 12


class _HungIndex(pb_grpc.GRPCInferenceServiceServicer):
    """A service that is healthy but never answers RepositoryIndex."""

    def __init__(self) -> None:
        self.asked = 0

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RepositoryIndexResponse:
        self.asked += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@contextmanager
def _hung_service(aio: Any) -> Iterator[tuple[int, _HungIndex]]:
    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        checks = health.aio.HealthServicer()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    servicer = _HungIndex()
    server, port = aio.run(start())
    try:
        yield port, servicer
    finally:
        aio.run(server.stop(0))


def test_a_service_that_never_answers_its_index_delays_no_one_long(
    aio: Any, services: Services
) -> None:
    with _hung_service(aio) as (port, hung):
        frameworks = {**services.urls(), "hung": f"127.0.0.1:{port}"}
        # Index calls time out after a health interval (the first round at start too).
        with _front(aio, frameworks, health_interval_s=3.0) as front:
            asked = hung.asked
            # Known models never wait on a look.
            started = time.monotonic()
            assert front.served_by(price_request(2.0, model=TORCH_ONLY)) == "pytorch"
            assert time.monotonic() - started < 1.0
            # An unknown one waits for the hung look at most its cap, or half its deadline.
            started = time.monotonic()
            code, details = rpc_error(
                front.stub.ModelInfer, price_request(1.0, model="ghost"), timeout=10
            )
            assert (code, "'ghost'" in details) == (grpc.StatusCode.NOT_FOUND, True)
            assert time.monotonic() - started < 2.5
            code, _ = rpc_error(
                front.stub.ModelInfer, price_request(1.0, model="ghost"), timeout=0.6
            )
            assert code is grpc.StatusCode.NOT_FOUND
            assert hung.asked > asked
