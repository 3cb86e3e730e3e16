"""The gateway's TrainingService in front of two fake framework services: Train goes where the
client says (field, metadata, or the default), job calls go by the job id's framework prefix,
ListJobs merges both, and errors pass through unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server import Gateway
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc

from .oip import eventually, rpc_error
from .training import kinds, line, predict, train_request, version_dirs

Stub = pb_grpc.GRPCInferenceServiceStub
Training = tpb_grpc.TrainingServiceStub
OK = pytest.approx
S = tpb.JobState
PYTORCH = (("x-framework", "pytorch"),)
TENSORFLOW = (("x-framework", "tensorflow"),)
# pytorch epochs are slow enough to act on a running job; tensorflow's are instant.
EPOCH_S = 0.02
LONG = 500


@dataclass
class Side:
    service: Service
    repository: Path
    training: Training  # direct, bypassing the gateway


@dataclass
class Stack:
    tensorflow: Side
    pytorch: Side
    gateway: Gateway
    stub: Stub
    training: Training

    def side(self, framework: str) -> Side:
        return {"tensorflow": self.tensorflow, "pytorch": self.pytorch}[framework]

    def job(self, job_id: str) -> tpb.Job:
        return self.training.GetJob(tpb.JobRequest(job_id=job_id))

    def jobs(self, metadata: Any = None, **filters: str) -> list[tpb.Job]:
        request = tpb.ListJobsRequest(**filters)
        return list(self.training.ListJobs(request, metadata=metadata).jobs)

    def train(self, request: tpb.TrainRequest, metadata: Any = None) -> list[tpb.TrainEvent]:
        return list(self.training.Train(request, metadata=metadata, timeout=30))


@contextmanager
def _stack(aio: Any, tmp_path_factory: pytest.TempPathFactory, **gateway: Any) -> Iterator[Stack]:
    with ExitStack() as stack:
        sides = {}
        for framework, delay in (("tensorflow", 0.0), ("pytorch", EPOCH_S)):
            root = tmp_path_factory.mktemp(framework)
            service = stack.enter_context(
                aio.service(
                    root / "models",
                    AffineBackend(framework=framework, epoch_delay=delay),
                    data_dir=root / "data",
                    tensorboard_dir=root / "runs",
                )
            )
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
            sides[framework] = Side(service, root / "models", Training(channel))
        front = stack.enter_context(
            aio.gateway(
                tensorflow_url=f"127.0.0.1:{sides['tensorflow'].service.port}",
                pytorch_url=f"127.0.0.1:{sides['pytorch'].service.port}",
                health_interval_s=0.2,
                **gateway,
            )
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{front.port}"))
        yield Stack(sides["tensorflow"], sides["pytorch"], front, Stub(channel), Training(channel))


@pytest.fixture(scope="module")
def stack(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _stack(aio, tmp_path_factory, model_frameworks={"torch-default": "pytorch"}) as stack:
        yield stack


# ---- routing Train ----


@pytest.mark.parametrize(
    ("model", "field", "metadata", "framework"),
    [
        ("by-field", "pytorch", None, "pytorch"),
        ("by-field-tf", "tensorflow", None, "tensorflow"),
        ("by-metadata", "", PYTORCH, "pytorch"),
        ("by-metadata-tf", "", TENSORFLOW, "tensorflow"),
        ("both-agree", "pytorch", PYTORCH, "pytorch"),
        ("by-default", "", None, "tensorflow"),
        ("torch-default", "", None, "pytorch"),  # the gateway's per-model default
    ],
)
def test_train_is_routed(
    stack: Stack, model: str, field: str, metadata: Any, framework: str
) -> None:
    events = stack.train(train_request(model, line(3, 1), framework=field), metadata)
    assert kinds(events) == ["started", "progress", "progress", "progress", "finished"]
    assert events[0].job_id.startswith(f"{framework}-")
    assert events[0].started.framework == framework
    finished = events[-1].finished
    assert Path(finished.path) == stack.side(framework).repository / model / "1"
    other = stack.pytorch if framework == "tensorflow" else stack.tensorflow
    assert version_dirs(other.repository, model) == []


def test_model_trained_through_the_gateway_is_served_by_its_framework(stack: Stack) -> None:
    stack.train(train_request("served", line(2, 3), framework="pytorch"))
    assert predict(stack.stub, "served", [[4.0]], metadata=PYTORCH) == ("1", OK([11.0], abs=1e-4))
    # Only pytorch has it, so a call without a framework is found there (the gateway looks
    # again on a miss); asked of tensorflow, it is NOT_FOUND.
    meta = stack.stub.ModelMetadata(pb.ModelMetadataRequest(name="served"), timeout=10)
    assert (meta.name, list(meta.versions)) == ("served", ["1"])
    config = stack.stub.ModelConfig(pb.ModelConfigRequest(name="served"), timeout=10).config
    assert config.parameters["framework"].string_value == "pytorch"
    code, details = rpc_error(
        stack.stub.ModelMetadata, pb.ModelMetadataRequest(name="served"), metadata=TENSORFLOW
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "served" in details


@pytest.mark.parametrize(
    ("field", "metadata", "message"),
    [
        ("pytorch", TENSORFLOW, "'pytorch' in its parameters and 'tensorflow' in metadata"),
        ("jax", None, "unknown framework 'jax'"),
        ("", (("x-framework", "jax"),), "unknown framework 'jax'"),
    ],
)
def test_bad_framework_choice_is_invalid(
    stack: Stack, field: str, metadata: Any, message: str
) -> None:
    before = stack.jobs()
    code, details = rpc_error(
        stack.train, train_request("conflict", line(1, 1), framework=field), metadata
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert stack.jobs() == before


@pytest.mark.parametrize(
    "request_",
    [
        train_request("bad-epochs", line(1, 1), framework="pytorch", epochs=0),
        train_request("bad-arch", line(1, 1), framework="pytorch", architecture="rnn"),
        train_request("a/b", line(1, 1), framework="tensorflow"),
        train_request(
            "bad-csv",
            tpb.Dataset(csv=tpb.CsvData(path="../x.csv")),
            framework="tensorflow",
        ),
    ],
    ids=["epochs", "architecture", "model-name", "csv-path"],
)
def test_bad_order_passes_through_unchanged(stack: Stack, request_: tpb.TrainRequest) -> None:
    direct = stack.side(request_.framework).training
    expected = rpc_error(lambda: list(direct.Train(request_)))
    assert expected[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(stack.train, request_) == expected


def test_missing_csv_passes_through_as_not_found(stack: Stack) -> None:
    request = train_request("no-csv", tpb.Dataset(csv=tpb.CsvData(path="x.csv")))
    code, details = rpc_error(stack.train, request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no CSV file 'x.csv'" in details


# ---- job calls by id ----


def test_job_calls_go_to_the_framework_in_the_job_id(stack: Stack) -> None:
    ids = {
        framework: stack.train(train_request(f"jobs-{framework}", framework=framework))[0].job_id
        for framework in ("tensorflow", "pytorch")
    }
    for framework, job_id in ids.items():
        direct = stack.side(framework).training.GetJob(tpb.JobRequest(job_id=job_id))
        assert stack.job(job_id) == direct
        assert direct.state == S.JOB_STATE_SUCCEEDED
        assert stack.training.CancelJob(tpb.JobRequest(job_id=job_id)) == direct
        watched = list(stack.training.WatchJob(tpb.JobRequest(job_id=job_id), timeout=30))
        assert kinds(watched) == ["started", "progress", "progress", "progress", "finished"]
        assert watched[-1].finished == direct.result


@pytest.mark.parametrize(
    ("job_id", "message"),
    [
        ("", "job ids start with the framework"),
        ("fake-123", "job ids start with the framework"),
        ("jax-123", "job ids start with the framework"),
        ("tensorflow", "no training job 'tensorflow' on this tensorflow service"),
        ("pytorch-000000000000", "no training job 'pytorch-000000000000' on this pytorch"),
    ],
)
def test_unknown_job_is_not_found(stack: Stack, job_id: str, message: str) -> None:
    request = tpb.JobRequest(job_id=job_id)
    for call in (
        stack.training.GetJob,
        stack.training.CancelJob,
        lambda r: list(stack.training.WatchJob(r)),
    ):
        code, details = rpc_error(call, request)
        assert code == grpc.StatusCode.NOT_FOUND
        assert message in details


def test_cancel_through_the_gateway(stack: Stack) -> None:
    call = stack.training.Train(
        train_request("gw-cancel", framework="pytorch", epochs=LONG), timeout=30
    )
    job_id = next(call).job_id
    assert job_id.startswith("pytorch-")
    answer = stack.training.CancelJob(tpb.JobRequest(job_id=job_id))
    rest = list(call)
    assert rest[-1].state == S.JOB_STATE_CANCELLED
    assert "cancelled" in rest[-1].error
    job = stack.job(job_id)
    assert job.state == S.JOB_STATE_CANCELLED
    assert job.epoch <= answer.epoch + 1 < LONG
    assert version_dirs(stack.pytorch.repository, "gw-cancel") == []


def test_job_outlives_a_caller_of_the_gateway(stack: Stack) -> None:
    epochs = 40
    call = stack.training.Train(train_request("gw-outlives", framework="pytorch", epochs=epochs))
    job_id = next(call).job_id
    next(call)
    call.cancel()  # the gateway cancels its upstream call; the job goes on
    assert stack.job(job_id).state == S.JOB_STATE_RUNNING
    watched = list(stack.training.WatchJob(tpb.JobRequest(job_id=job_id), timeout=30))
    assert kinds(watched) == ["started", *["progress"] * epochs, "finished"]
    assert eventually(lambda: stack.job(job_id).state == S.JOB_STATE_SUCCEEDED)
    assert predict(stack.stub, "gw-outlives", [[1.0]], metadata=PYTORCH)[1] == OK([4.0], abs=1e-4)


# ---- listing ----


def test_list_jobs_merges_both_services(stack: Stack) -> None:
    tf_id = stack.train(train_request("listed", framework="tensorflow"))[0].job_id
    pt_id = stack.train(train_request("listed", framework="pytorch"))[0].job_id

    merged = stack.jobs(model_name="listed")
    assert [job.job_id for job in merged] == [tf_id, pt_id]  # oldest first
    everything = stack.jobs()
    direct = [
        job
        for side in (stack.tensorflow, stack.pytorch)
        for job in side.training.ListJobs(tpb.ListJobsRequest()).jobs
    ]
    assert sorted(j.job_id for j in everything) == sorted(j.job_id for j in direct)
    created = [job.created_unix for job in everything]
    assert created == sorted(created)

    for framework, job_id in (("tensorflow", tf_id), ("pytorch", pt_id)):
        by_field = stack.jobs(model_name="listed", framework=framework)
        assert [job.job_id for job in by_field] == [job_id]
        metadata = PYTORCH if framework == "pytorch" else TENSORFLOW
        by_metadata = stack.jobs(metadata, model_name="listed")
        assert [job.job_id for job in by_metadata] == [job_id]
        assert all(job.framework == framework for job in stack.jobs(framework=framework))

    assert stack.jobs(model_name="never-trained") == []
    code, details = rpc_error(stack.jobs, framework="jax")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown framework 'jax'" in details
