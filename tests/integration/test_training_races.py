"""Training races through the real gRPC path: two services training one model into a shared
repository get distinct versions, a cancel racing a job's start never leaves it training as
CANCELLED, and an ended job still answers after dropping its data."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.app.server import Service
from serving.backend import TrainResult, TrainSpec
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc

from .conftest import WAIT_S
from .oip import eventually
from .training import inline, kinds, line, predict, train_request, version_dirs

S = tpb.JobState


class _Meeting(AffineBackend):
    """Trains only once every backend sharing `barrier` is inside `train`: the jobs overlap
    for certain, as two replicas' jobs of one model would."""

    def __init__(self, barrier: threading.Barrier, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.barrier = barrier

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        self.barrier.wait(WAIT_S)
        return super().train(spec, version_dir)


def _channels(services: list[Service]) -> Iterator[grpc.Channel]:
    for service in services:
        yield grpc.insecure_channel(f"127.0.0.1:{service.port}")


def test_two_services_training_one_model_get_two_versions(aio: Any, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    barrier = threading.Barrier(2)
    settings = {"repository_poll_s": 0.1, "latest_versions": 2, "tensorboard_dir": tmp_path}
    with (
        aio.service(repository, _Meeting(barrier), **settings) as first,
        aio.service(repository, _Meeting(barrier), **settings) as second,
    ):
        channels = list(_channels([first, second]))
        trainings = [tpb_grpc.TrainingServiceStub(channel) for channel in channels]
        slopes = [2.0, 5.0]
        with ThreadPoolExecutor(2) as pool:
            streams = list(
                pool.map(
                    lambda stub, slope: list(
                        stub.Train(train_request("shared", line(slope, 0)), timeout=WAIT_S)
                    ),
                    trainings,
                    slopes,
                )
            )
        # Both jobs ran their whole course and each names the version it really got.
        for events in streams:
            assert kinds(events) == ["started", "progress", "progress", "progress", "finished"]
        got = [events[-1].finished.version for events in streams]
        assert sorted(got) == [1, 2]
        assert version_dirs(repository, "shared") == ["1", "2"]
        # Each version holds its own job's model, and both services serve both.
        for channel in channels:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for version, slope in zip(got, slopes, strict=True):

                def answers(stub: Any = stub, version: int = version) -> bool:
                    try:
                        predict(stub, "shared", [[1.0]], version=str(version))
                    except grpc.RpcError:
                        return False
                    return True

                assert eventually(answers, WAIT_S)
                answered, values = predict(stub, "shared", [[10.0]], version=str(version))
                assert answered == str(version)
                assert values == pytest.approx([10 * slope], rel=1e-3)
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert sorted(m.version for m in index.models if m.name == "shared") == ["1", "2"]
        for channel in channels:
            channel.close()


def _jobs(training: tpb_grpc.TrainingServiceStub, model: str) -> list[tpb.Job]:
    return list(training.ListJobs(tpb.ListJobsRequest(model_name=model)).jobs)


@pytest.fixture(scope="module")
def slow(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Path]]:
    root = tmp_path_factory.mktemp("races")
    with aio.service(
        root / "models", AffineBackend(epoch_delay=0.005), tensorboard_dir=root / "runs"
    ) as service:
        yield service, root / "models"


def test_cancel_right_after_submit_ends_cancelled_without_a_version(
    slow: tuple[Service, Path],
) -> None:
    service, repository = slow
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        training = tpb_grpc.TrainingServiceStub(channel)
        for n in range(20):
            model = f"raced{n}"
            call = training.Train(train_request(model, epochs=100_000), timeout=WAIT_S)
            # The job is listed from its submit on, before it starts.
            assert eventually(lambda model=model: bool(_jobs(training, model)), WAIT_S)
            (submitted,) = _jobs(training, model)
            answer = training.CancelJob(tpb.JobRequest(job_id=submitted.job_id))
            events = list(call)
            # One end, CANCELLED, and nothing after it.
            assert [e.state for e in events].count(S.JOB_STATE_CANCELLED) == 1
            assert events[-1].state == S.JOB_STATE_CANCELLED
            assert "cancelled" in events[-1].error
            if answer.state == S.JOB_STATE_CANCELLED:
                # Cancelled before it started: it never did.
                assert kinds(events) == ["error"]
                assert answer.epoch == 0
            else:
                # It had started: it showed RUNNING until it stopped.
                assert answer.state == S.JOB_STATE_RUNNING
                assert kinds(events)[0] == "started"
            job = training.GetJob(tpb.JobRequest(job_id=submitted.job_id))
            assert job.state == S.JOB_STATE_CANCELLED
            assert version_dirs(repository, model) == []


def test_an_ended_job_answers_without_its_training_data(aio: Any, tmp_path: Path) -> None:
    x = np.arange(5000, dtype=np.float32).reshape(-1, 1)
    with (
        aio.service(tmp_path / "models", AffineBackend(), tensorboard_dir=tmp_path) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        training = tpb_grpc.TrainingServiceStub(channel)
        events = list(training.Train(train_request("big", inline(x, 3 * x)), timeout=WAIT_S))
        assert kinds(events)[-1] == "finished"
        job_id = events[0].job_id
        # The service keeps no row of it ...
        plan = service.jobs.get(job_id).plan
        assert (plan.x.size, plan.y.size, plan.x_val.size, plan.y_val.size) == (0, 0, 0, 0)
        # ... and still says what the job was.
        job = training.GetJob(tpb.JobRequest(job_id=job_id))
        assert (job.state, job.model_name, job.architecture) == (
            S.JOB_STATE_SUCCEEDED,
            "big",
            "linear",
        )
        assert job.dataset == events[0].started.dataset != ""
        assert (job.epochs, len(job.history), job.result.version) == (3, 3, 1)
        (listed,) = training.ListJobs(tpb.ListJobsRequest(model_name="big")).jobs
        assert listed.job_id == job_id and listed.state == S.JOB_STATE_SUCCEEDED


class _Held(AffineBackend):
    """Holds each training until `hold` is set, and says when one is inside."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.entered = threading.Event()

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        self.entered.set()
        assert self.hold.wait(WAIT_S)
        return super().train(spec, version_dir)


class _CancelJobAt:
    """A job's lock that, at the training thread's k-th acquisition, first has a client's
    CancelJob call answered: every point where a cancel can meet a job's start and epochs."""

    def __init__(self, training: tpb_grpc.TrainingServiceStub, job_id: str, k: int) -> None:
        self.training, self.job_id, self.k = training, job_id, k
        self.inner = threading.Lock()
        self.count = 0
        self.fired = False
        self.answers: list[tpb.Job] = []

    def __enter__(self) -> None:
        if threading.current_thread().name.startswith("train"):
            self.count += 1
            if self.count == self.k:
                self.fired = True
                request = tpb.JobRequest(job_id=self.job_id)
                self.answers.append(self.training.CancelJob(request, timeout=WAIT_S))
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_cancel_job_at_every_point_of_a_start(aio: Any, tmp_path: Path) -> None:
    backend = _Held()
    repository = tmp_path / "models"
    outcomes = {}
    with (
        aio.service(repository, backend, tensorboard_dir=tmp_path / "runs") as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        training = tpb_grpc.TrainingServiceStub(channel)
        # The training thread takes a job's lock to start it, once per epoch (3) and to end it.
        for k in range(1, 7):
            backend.hold.clear()
            backend.entered.clear()
            blocker = training.Train(train_request(f"blocker{k}", epochs=1), timeout=WAIT_S)
            assert backend.entered.wait(WAIT_S)
            call = training.Train(train_request(f"m{k}", epochs=3), timeout=WAIT_S)
            assert eventually(lambda k=k: bool(_jobs(training, f"m{k}")), WAIT_S)
            (queued,) = _jobs(training, f"m{k}")
            lock = _CancelJobAt(training, queued.job_id, k)
            service.jobs.get(queued.job_id).lock = lock
            backend.hold.set()
            list(blocker)
            events = list(call)
            # Fired (if ever) before the job's end; its answer may come after the stream's.
            assert eventually(lambda lock=lock: len(lock.answers) == lock.fired, WAIT_S)
            # One end, the last event; a job CancelJob saw CANCELLED never started.
            ends = [e for e in events if e.state != S.JOB_STATE_RUNNING]
            assert ends == [events[-1]]
            if lock.answers and lock.answers[0].state == S.JOB_STATE_CANCELLED:
                assert kinds(events) == ["error"]
            job = training.GetJob(tpb.JobRequest(job_id=queued.job_id))
            assert job.state == events[-1].state
            outcomes[k] = (
                [answer.state for answer in lock.answers],
                job.state,
                len(job.history),
                version_dirs(repository, f"m{k}"),
            )
    running, cancelled, succeeded = (
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_CANCELLED,
        S.JOB_STATE_SUCCEEDED,
    )
    assert outcomes == {
        1: ([cancelled], cancelled, 0, []),
        2: ([running], cancelled, 1, []),
        3: ([running], cancelled, 2, []),
        4: ([running], cancelled, 3, []),
        # Past its last epoch a job completes; CancelJob then finds it as it is.
        5: ([running], succeeded, 3, ["1"]),
        6: ([], succeeded, 3, ["1"]),
    }
