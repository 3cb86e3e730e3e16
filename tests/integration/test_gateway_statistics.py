"""ModelStatistics through the gateway covers every service that ran the model's calls: two
fake "pytorch" replicas and one fake "tensorflow" service, each asked directly and through
the gateway; the gateway's answer is the field-by-field sum of the right services'."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message

from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.seed import seed_repository

from .oip import SEED_MODEL, price_request, rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub
PYTORCH = (("x-framework", "pytorch"),)
SPLIT = "house_split"  # served by both frameworks, half and half


@dataclass
class Stack:
    tensorflow: Service
    pytorch: list[Service]
    stub: Stub


@pytest.fixture(scope="module")
def stack(aio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("statistics")
    repositories = {"tensorflow": root / "tensorflow", "pytorch": root / "pytorch"}
    for framework, path in repositories.items():
        assert seed_repository(ModelRepository(path), AffineBackend(framework=framework))
        (path / SPLIT).symlink_to(path / SEED_MODEL, target_is_directory=True)
    routing = root / "routing.json"
    routing.write_text(json.dumps({SPLIT: {"split": {"tensorflow": 1, "pytorch": 1}}}))
    with ExitStack() as stack:
        tensorflow = stack.enter_context(
            aio.service(repositories["tensorflow"], AffineBackend(framework="tensorflow"))
        )
        pytorch = [
            stack.enter_context(
                aio.service(repositories["pytorch"], AffineBackend(framework="pytorch"))
            )
            for _ in range(2)
        ]
        gateway = stack.enter_context(
            aio.gateway(
                tensorflow_url=f"127.0.0.1:{tensorflow.port}",
                pytorch_url=",".join(f"127.0.0.1:{s.port}" for s in pytorch),
                health_interval_s=0.2,
                routing_file=routing,
            )
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{gateway.port}"))
        yield Stack(tensorflow, pytorch, Stub(channel))


def _direct(service: Service, model: str) -> pb.ModelStatistics:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        answer = Stub(channel).ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
    (entry,) = answer.model_stats
    return entry


def _durations(message: Message, prefix: str = "") -> dict[str, tuple[int, int]]:
    """Every StatisticDuration in `message`, by path: (count, ns)."""
    found: dict[str, tuple[int, int]] = {}
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is pb.StatisticDuration.DESCRIPTOR:
            found[path] = (value.count, value.ns)
        elif field.name == "batch_stats":
            for batch in value:
                found |= _durations(batch, f"{path}[{batch.batch_size}].")
        elif field.name == "inference_stats":
            found |= _durations(value, f"{path}.")
    return found


def _sum(entries: list[pb.ModelStatistics]) -> dict[str, object]:
    durations: dict[str, tuple[int, int]] = {}
    for entry in entries:
        for path, (count, ns) in _durations(entry).items():
            old = durations.get(path, (0, 0))
            durations[path] = (old[0] + count, old[1] + ns)
    return {
        "inference_count": sum(e.inference_count for e in entries),
        "execution_count": sum(e.execution_count for e in entries),
        "last_inference": max(e.last_inference for e in entries),
        "durations": durations,
    }


def _summary(entry: pb.ModelStatistics) -> dict[str, object]:
    return _sum([entry])


def test_replicas_statistics_are_summed(stack: Stack) -> None:
    for size in range(1, 7):  # round robin: three calls on each replica
        stack.stub.ModelInfer(price_request(float(size), 2.0 * size), metadata=PYTORCH)
    replicas = [_direct(service, SEED_MODEL) for service in stack.pytorch]
    assert [entry.inference_count for entry in replicas] == [6, 6]
    answer = stack.stub.ModelStatistics(
        pb.ModelStatisticsRequest(name=SEED_MODEL), metadata=PYTORCH, timeout=5
    )
    (entry,) = answer.model_stats
    assert (entry.name, entry.version) == (SEED_MODEL, "1")
    assert _summary(entry) == _sum(replicas)
    assert entry.inference_stats.success.count == 6
    assert entry.inference_stats.compute_infer.count == 6


def test_split_model_statistics_cover_both_frameworks(stack: Stack) -> None:
    for index in range(20):
        stack.stub.ModelInfer(price_request(1800.0, model=SPLIT, id=f"call-{index}"))
    services = [stack.tensorflow, *stack.pytorch]
    direct = [_direct(service, SPLIT) for service in services]
    assert sum(entry.inference_count for entry in direct) == 20
    assert direct[0].inference_count not in (0, 20)  # both frameworks took calls
    answer = stack.stub.ModelStatistics(pb.ModelStatisticsRequest(name=SPLIT), timeout=5)
    (entry,) = answer.model_stats
    assert _summary(entry) == _sum(direct)


def test_all_models_from_every_service(stack: Stack) -> None:
    stack.stub.ModelInfer(price_request(1800.0))  # the default framework: tensorflow
    answer = stack.stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=5)
    entries = {(e.name, e.version): e for e in answer.model_stats}
    assert sorted(entries) == [(SEED_MODEL, "1"), (SPLIT, "1")]
    services = [stack.tensorflow, *stack.pytorch]
    for model in (SEED_MODEL, SPLIT):
        direct = [_direct(service, model) for service in services]
        assert _summary(entries[(model, "1")]) == _sum(direct)


def test_unknown_model_is_not_found(stack: Stack) -> None:
    code, details = rpc_error(
        stack.stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"), timeout=5
    )
    assert code is grpc.StatusCode.NOT_FOUND
    assert "nope" in details
