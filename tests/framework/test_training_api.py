"""Training through the real gRPC path, with real TensorFlow and PyTorch services behind the
gateway (separate processes): the project's quality bars, determinism, cancel, TensorBoard."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.training.tensorboard import read_scalars

pytestmark = pytest.mark.framework

FRAMEWORKS = ("tensorflow", "pytorch")
S = tpb.JobState


@dataclass
class Stack:
    root: Path
    gateway: Process
    channel: grpc.Channel

    @property
    def training(self) -> tpb_grpc.TrainingServiceStub:
        return tpb_grpc.TrainingServiceStub(self.channel)

    @property
    def inference(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    def train(self, request: tpb.TrainRequest) -> list[tpb.TrainEvent]:
        return list(self.training.Train(request, timeout=300))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("training-api")
    env = {
        "TWINSERVE_TENSORBOARD_DIR": str(root / "runs"),
        "TWINSERVE_DATA_DIR": str(root / "data"),
        "TWINSERVE_LOG_LEVEL": "WARNING",
    }
    started: list[Process] = []
    try:
        for name, module in (("tensorflow", "tf_service"), ("pytorch", "torch_service")):
            started.append(launch(name, module, ["--model-repository", str(root / name)], env=env))
        gateway = launch(
            "gateway",
            "gateway",
            env={
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": started[0].address,
                "TWINSERVE_GATEWAY_PYTORCH_URL": started[1].address,
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
        started.append(gateway)
        with grpc.insecure_channel(gateway.address) as channel:
            yield Stack(root, gateway, channel)
    finally:
        for process in reversed(started):
            assert process.stop() == 0, f"{process.name} did not drain cleanly"


def _order(
    framework: str, model: str, architecture: str, dataset: str, **hyper: float | int
) -> tpb.TrainRequest:
    request = tpb.TrainRequest(
        framework=framework,
        model_name=model,
        architecture=architecture,
        dataset=tpb.Dataset(builtin=dataset),
    )
    for key, value in hyper.items():
        setattr(request.hyperparameters, key, value)
    return request


def _finished(events: list[tpb.TrainEvent]) -> tpb.JobResult:
    assert events[-1].state == S.JOB_STATE_SUCCEEDED, events[-1].error
    return events[-1].finished


RUNTIMES = {
    "tensorflow": {
        "native": "tensorflow_savedmodel",
        "tflite": "tensorflow_lite",
        "onnx": "onnxruntime_onnx",
    },
    "pytorch": {
        "native": "pytorch_eager",
        "torchscript": "pytorch_torchscript",
        "onnx": "onnxruntime_onnx",
    },
}


def _predict(
    stack: Stack, framework: str, model: str, sizes: list[float], runtime: str = ""
) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    data = np.asarray(sizes, np.float32).reshape(-1, 1)
    request.inputs.add(name="size_sqft", datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    request.parameters["framework"].string_param = framework
    if runtime:
        request.parameters["runtime"].string_param = runtime
    response = stack.inference.ModelInfer(request, timeout=10)
    assert response.parameters["framework"].string_param == framework
    assert response.parameters["runtime"].string_param == (runtime or "native")
    return np.frombuffer(response.raw_output_contents[0], np.float32)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_house_price_trained_over_grpc_serves_360(stack: Stack, framework: str) -> None:
    events = stack.train(_order(framework, "price", "linear", "house_price"))
    kinds = [event.WhichOneof("event") for event in events]
    epochs = events[0].started.epochs
    assert kinds == ["started", *["progress"] * epochs, "finished"]
    assert [e.progress.epoch for e in events[1:-1]] == list(range(1, epochs + 1))
    result = _finished(events)
    assert result.version == 1
    assert Path(result.path, "model.json").is_file()
    assert result.metrics["weight"] == pytest.approx(0.2, abs=0.005)
    # Every runtime of the framework answers the bar, through the gateway.
    for runtime in RUNTIMES[framework]:
        answer = _predict(stack, framework, "price", [1800.0], runtime)[0]
        assert answer == pytest.approx(360.0, abs=1.0), runtime
    meta = json.loads(Path(result.path, "model.json").read_text())
    assert {name: info["platform"] for name, info in meta["runtimes"].items()} == RUNTIMES[
        framework
    ]
    assert all(info["status"] == "ok" for info in meta["runtimes"].values())
    config = stack.inference.ModelConfig(
        pb.ModelConfigRequest(name="price"), timeout=10, metadata=(("x-framework", framework),)
    ).config
    assert set(config.parameters["runtimes"].string_value.split(",")) == set(RUNTIMES[framework])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mlp_held_out_rmse(stack: Stack, framework: str) -> None:
    result = _finished(stack.train(_order(framework, "features", "mlp", "house_features")))
    # The generator's noise has standard deviation 8: an RMSE near it is the floor.
    assert 7.0 < result.metrics["test_rmse"] < 12.0


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cnn_digits_accuracy(stack: Stack, framework: str) -> None:
    events = stack.train(_order(framework, "digits", "cnn", "digits"))
    result = _finished(events)
    assert result.metrics["test_accuracy"] >= 0.95
    meta = json.loads(Path(result.path, "model.json").read_text())
    # Every export of the CNN matched the native probabilities when it was made.
    for runtime, info in meta["runtimes"].items():
        assert info["status"] == "ok", (runtime, info)
        assert info.get("max_abs_diff", 0.0) < 1e-4
    assert all(e.progress.metric == "accuracy" for e in events[1:-1])
    meta = stack.inference.ModelMetadata(
        pb.ModelMetadataRequest(name="digits"), timeout=10, metadata=(("x-framework", framework),)
    )
    assert [list(t.shape) for t in meta.inputs] == [[-1, 8, 8, 1]]
    assert [list(t.shape) for t in meta.outputs] == [[-1, 10]]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_same_model(stack: Stack, framework: str) -> None:
    first = _finished(
        stack.train(_order(framework, "seeded", "mlp", "house_features", epochs=5, seed=7))
    )
    second = _finished(
        stack.train(_order(framework, "seeded", "mlp", "house_features", epochs=5, seed=7))
    )
    other = _finished(
        stack.train(_order(framework, "seeded", "mlp", "house_features", epochs=5, seed=8))
    )
    assert (first.version, second.version) == (1, 2)
    for key in ("loss", "val_loss", "val_metric", "test_rmse"):
        assert first.metrics[key] == second.metrics[key], key
    assert other.metrics["test_rmse"] != first.metrics["test_rmse"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cancel_leaves_no_version(stack: Stack, framework: str) -> None:
    events = stack.training.Train(
        _order(framework, f"cancelled_{framework}", "cnn", "digits", epochs=500), timeout=300
    )
    started = next(events)
    assert next(events).WhichOneof("event") == "progress"
    stack.training.CancelJob(tpb.JobRequest(job_id=started.job_id), timeout=10)
    rest = list(events)
    assert rest[-1].state == S.JOB_STATE_CANCELLED
    assert "cancel" in rest[-1].error
    assert len(rest) <= 4  # stopped within an epoch or so of the request
    job = stack.training.GetJob(tpb.JobRequest(job_id=started.job_id), timeout=10)
    assert job.state == S.JOB_STATE_CANCELLED
    model_dir = stack.root / framework / f"cancelled_{framework}"
    assert not model_dir.exists() or not any(model_dir.iterdir())


def test_tensorboard_tags_are_the_same_in_both_frameworks(stack: Stack) -> None:
    jobs = stack.training.ListJobs(tpb.ListJobsRequest(model_name="price"), timeout=10).jobs
    assert {job.framework for job in jobs} == set(FRAMEWORKS)
    tags = {}
    for job in jobs:
        assert Path(job.tensorboard_dir).is_relative_to(stack.root / "runs" / "price")
        scalars = read_scalars(Path(job.tensorboard_dir))
        tags[job.framework] = set(scalars)
        assert [step for step, _ in scalars["loss/train"]] == list(range(1, job.epochs + 1))
    assert (
        tags["tensorflow"]
        == tags["pytorch"]
        == {
            "loss/train",
            "loss/validation",
            "rmse/validation",
            "throughput/samples_per_second",
        }
    )
    assert os.path.commonpath([j.tensorboard_dir for j in jobs]) == str(
        stack.root / "runs" / "price"
    )
