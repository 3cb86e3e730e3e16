"""twinserve.v1.TrainingService on a real grpc.aio service with the NumPy backend: jobs stream
their progress, outlive their callers, can be cancelled, and a trained model is served at
once; bad orders are refused before anything is written."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.app.server import Service
from serving.backend.architectures import ARCHITECTURES
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.training.jobs import JobState
from serving.training.tensorboard import read_scalars

from .oip import eventually, rpc_error
from .training import inline, kinds, line, predict, train_request, version_dirs

Stub = pb_grpc.GRPCInferenceServiceStub
Training = tpb_grpc.TrainingServiceStub
OK = pytest.approx
S = tpb.JobState

# The slow service's epochs: long enough to act while a job runs, short enough that
# "within one epoch" is quick. LONG epochs take 10 s: jobs that long are always cancelled.
EPOCH_S = 0.02
LONG = 500
TAGS = {"loss/train", "loss/validation", "rmse/validation", "throughput/samples_per_second"}


@dataclass
class Setup:
    service: Service
    repository: Path
    data_dir: Path
    runs: Path
    stub: Stub
    training: Training

    def job(self, job_id: str) -> tpb.Job:
        return self.training.GetJob(tpb.JobRequest(job_id=job_id))

    def jobs(self, **filters: str) -> list[tpb.Job]:
        return list(self.training.ListJobs(tpb.ListJobsRequest(**filters)).jobs)

    def train(self, request: tpb.TrainRequest) -> list[tpb.TrainEvent]:
        return list(self.training.Train(request, timeout=30))


def _write_data(data_dir: Path, outside: Path) -> None:
    data_dir.mkdir()
    # price = 2 size + 5 whatever the age.
    ages = [3, 1, 4, 1, 5] * 2
    rows = [(size, age, 2 * size + 5) for size, age in zip(range(1, 11), ages, strict=True)]
    (data_dir / "house.csv").write_text(
        "size,age,price\n" + "".join(f"{s},{a},{p}\n" for s, a, p in rows)
    )
    (data_dir / "text.csv").write_text("size,price\n1,7\n2,nine\n3,11\n")
    (data_dir / "latin1.csv").write_bytes("size,price\n1,7\ncaf\xe9,9\n".encode("latin-1"))
    (data_dir / "big-field.csv").write_text("size,price\n1,7\n2," + "9" * 131_073 + "\n")
    (data_dir / "empty.csv").write_text("")
    (data_dir / "nan-label.csv").write_text("size,price\n1,7\n2,NaN\n3,11\n")
    (data_dir / "subdir").mkdir()
    (outside / "secret.csv").write_text("size,price\n1,2\n2,4\n3,6\n")
    (data_dir / "escape.csv").symlink_to(outside / "secret.csv")


@contextmanager
def _setup(
    aio: Any, tmp_path_factory: pytest.TempPathFactory, backend: AffineBackend, **settings: Any
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("training")
    repository, data_dir, runs = root / "models", root / "data", root / "runs"
    _write_data(data_dir, root)
    with ExitStack() as stack:
        settings.setdefault("tensorboard_dir", runs)
        service = stack.enter_context(
            aio.service(repository, backend, data_dir=data_dir, **settings)
        )
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
        yield Setup(service, repository, data_dir, runs, Stub(channel), Training(channel))


@pytest.fixture(scope="module")
def fast(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with _setup(aio, tmp_path_factory, AffineBackend()) as setup:
        yield setup


@pytest.fixture(scope="module")
def slow(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with _setup(aio, tmp_path_factory, AffineBackend(epoch_delay=EPOCH_S)) as setup:
        yield setup


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---- a job from start to finish ----


def test_train_streams_started_progress_finished(fast: Setup) -> None:
    events = fast.train(
        train_request("features", tpb.Dataset(builtin="house_features"), architecture="mlp")
    )
    assert kinds(events) == ["started", "progress", "progress", "progress", "finished"]
    job_id = events[0].job_id
    assert job_id.startswith("fake-")
    assert all(event.job_id == job_id for event in events)
    assert [event.state for event in events] == [S.JOB_STATE_RUNNING] * 4 + [S.JOB_STATE_SUCCEEDED]

    started = events[0].started
    assert (started.job_id, started.framework, started.model_name) == (job_id, "fake", "features")
    assert (started.architecture, started.dataset, started.epochs) == ("mlp", "house_features", 3)

    progress = [event.progress for event in events[1:-1]]
    assert [(p.epoch, p.epochs, p.metric) for p in progress] == [(e, 3, "rmse") for e in (1, 2, 3)]
    for p in progress:
        assert p.samples_per_second > 0
        assert p.HasField("val_loss") and p.HasField("val_metric")
        assert p.val_metric > 0  # RMSE in thousands on the held-out fifth
        # The remaining epochs at the mean epoch time so far.
        assert p.eta_seconds == OK(p.elapsed_seconds / p.epoch * (p.epochs - p.epoch))
    elapsed = [p.elapsed_seconds for p in progress]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == 3 and elapsed[0] > 0
    assert progress[0].eta_seconds > progress[-1].eta_seconds == 0

    finished = events[-1].finished
    assert (finished.model_name, finished.version) == ("features", 1)
    path = Path(finished.path)
    assert path == fast.repository / "features" / "1"
    assert (path / "model.json").is_file()
    assert "test_rmse" in finished.metrics
    # The fake fits the best affine map; the noise and the non-linear term are left over.
    assert 5 < finished.metrics["test_rmse"] < 40


def test_trained_model_is_served_at_once_and_retraining_makes_a_new_version(
    fast: Setup,
) -> None:
    first = fast.train(train_request("line", line(3, 1)))
    assert first[-1].finished.version == 1
    # Served the moment the stream says so: no reload, no restart.
    assert predict(fast.stub, "line", [[2.0], [10.0]]) == ("1", OK([7.0, 31.0], abs=1e-4))

    second = fast.train(train_request("line", line(-2, 4)))
    assert second[-1].finished.version == 2
    assert version_dirs(fast.repository, "line") == ["1", "2"]
    metadata = fast.stub.ModelMetadata(pb.ModelMetadataRequest(name="line"))
    assert list(metadata.versions) == ["2"]
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("input", [-1, 1])]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("output", [-1, 1])]
    assert predict(fast.stub, "line", [[2.0]]) == ("2", OK([0.0], abs=1e-4))


def test_get_job_and_list_jobs(fast: Setup) -> None:
    # No hyper-parameters at all: the architecture's defaults.
    request = train_request("listed", line(1, 0), epochs=None)
    events = fast.train(request)
    job_id = events[0].job_id
    job = fast.job(job_id)
    linear = ARCHITECTURES["linear"]

    assert (job.job_id, job.framework, job.model_name) == (job_id, "fake", "listed")
    assert (job.architecture, job.dataset, job.state) == ("linear", "inline", S.JOB_STATE_SUCCEEDED)
    assert job.error == ""
    assert job.epoch == job.epochs == len(job.history) == linear.epochs
    assert [p.epoch for p in job.history] == list(range(1, linear.epochs + 1))
    assert list(job.history) == [event.progress for event in events[1:-1]]
    assert job.result == events[-1].finished
    hp = job.hyperparameters
    assert (hp.epochs, hp.batch_size, hp.learning_rate) == (
        linear.epochs,
        linear.batch_size,
        OK(linear.learning_rate),
    )
    assert (hp.optimizer, hp.seed, hp.validation_split) == ("adam", 0, OK(0.2))
    assert 0 < job.created_unix <= job.finished_unix
    assert Path(job.tensorboard_dir) == fast.runs / "listed" / "fake" / job_id
    assert Path(job.tensorboard_dir).is_dir()

    # Given hyper-parameters are kept as given.
    other = fast.train(
        train_request(
            "listed",
            line(1, 0),
            epochs=2,
            batch_size=4,
            learning_rate=0.5,
            optimizer="sgd",
            seed=7,
            validation_split=0.0,
        )
    )
    hp = fast.job(other[0].job_id).hyperparameters
    assert (hp.epochs, hp.batch_size, hp.learning_rate, hp.optimizer, hp.seed) == (
        2,
        4,
        0.5,
        "sgd",
        7,
    )
    assert hp.validation_split == 0.0
    # No validation rows: no validation numbers.
    assert not other[1].progress.HasField("val_loss")
    assert not other[1].progress.HasField("val_metric")

    listed = fast.jobs(model_name="listed")
    assert [j.job_id for j in listed] == [job_id, other[0].job_id]  # oldest first
    # ListJobs sends summaries: the job without its per-epoch history.
    summary = tpb.Job()
    summary.CopyFrom(job)
    summary.ClearField("history")
    assert listed[0] == summary
    assert len(job.history) == job.epochs
    assert {j.job_id for j in fast.jobs()} >= {job_id, other[0].job_id}
    assert {j.job_id for j in fast.jobs(framework="fake")} == {j.job_id for j in fast.jobs()}
    assert fast.jobs(framework="other") == []
    assert fast.jobs(model_name="never-trained") == []

    # Cancelling a finished job changes nothing.
    assert fast.training.CancelJob(tpb.JobRequest(job_id=job_id)) == job


@pytest.mark.parametrize("job_id", ["", "fake-000000000000", "nope"])
def test_unknown_job_is_not_found(fast: Setup, job_id: str) -> None:
    request = tpb.JobRequest(job_id=job_id)
    for call in (
        fast.training.GetJob,
        fast.training.CancelJob,
        lambda r: list(fast.training.WatchJob(r)),
    ):
        code, details = rpc_error(call, request)
        assert code == grpc.StatusCode.NOT_FOUND
        assert f"no training job '{job_id}'" in details


def test_tensorboard_scalars(fast: Setup) -> None:
    events = fast.train(train_request("board", line(2, 0), epochs=4))
    job = fast.job(events[0].job_id)
    assert list(Path(job.tensorboard_dir).glob("events.out.tfevents.*"))
    scalars = read_scalars(Path(job.tensorboard_dir))
    assert set(scalars) == TAGS
    for tag in TAGS:
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4], tag
    history = job.history
    assert [v for _, v in scalars["loss/train"]] == OK([p.train_loss for p in history])
    assert [v for _, v in scalars["loss/validation"]] == OK([p.val_loss for p in history])
    assert [v for _, v in scalars["rmse/validation"]] == OK(
        [p.val_metric for p in history], abs=1e-6
    )
    assert [v for _, v in scalars["throughput/samples_per_second"]] == OK(
        [p.samples_per_second for p in history], rel=1e-6
    )


# ---- jobs that end early ----


def test_cancel_stops_within_an_epoch_and_leaves_no_version(slow: Setup) -> None:
    call = slow.training.Train(train_request("cancelled", line(1, 1), epochs=LONG), timeout=30)
    started, first = next(call), next(call)
    assert (started.WhichOneof("event"), first.progress.epoch) == ("started", 1)
    job_id = started.job_id

    answer = slow.training.CancelJob(tpb.JobRequest(job_id=job_id))
    assert answer.job_id == job_id
    assert answer.state in (S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLED)
    rest = list(call)

    assert kinds(rest) == ["progress"] * (len(rest) - 1) + ["error"]
    last = rest[-1]
    assert last.state == S.JOB_STATE_CANCELLED
    assert "cancelled" in last.error
    # The epoch running when the cancel came is the last.
    job = slow.job(job_id)
    assert job.state == S.JOB_STATE_CANCELLED
    assert job.error == last.error
    assert job.epoch <= answer.epoch + 1 < LONG
    assert not job.HasField("result")
    assert job.finished_unix >= job.created_unix
    assert version_dirs(slow.repository, "cancelled") == []
    code, _ = rpc_error(slow.stub.ModelMetadata, pb.ModelMetadataRequest(name="cancelled"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_job_outlives_its_caller_and_can_be_watched(slow: Setup) -> None:
    epochs = 40
    call = slow.training.Train(train_request("outlives", line(5, 0), epochs=epochs))
    started, _ = next(call), next(call)
    call.cancel()
    code, _ = rpc_error(next, call)
    assert code == grpc.StatusCode.CANCELLED
    job_id = started.job_id
    assert slow.job(job_id).state == S.JOB_STATE_RUNNING

    # Watching a running job replays what happened, then follows it live.
    live = list(slow.training.WatchJob(tpb.JobRequest(job_id=job_id), timeout=30))
    assert kinds(live) == ["started", *["progress"] * epochs, "finished"]
    assert [e.progress.epoch for e in live[1:-1]] == list(range(1, epochs + 1))
    assert live[-1].state == S.JOB_STATE_SUCCEEDED
    assert live[-1].finished.version == 1
    assert eventually(lambda: slow.job(job_id).state == S.JOB_STATE_SUCCEEDED)

    # A finished job replays the same events.
    replay = list(slow.training.WatchJob(tpb.JobRequest(job_id=job_id), timeout=30))
    assert replay[1:] == live[1:]
    assert replay[0].started.job_id == job_id
    # The replayed `started` shows the job as it started, not as it is now.
    assert replay[0].started.state == S.JOB_STATE_RUNNING
    assert not replay[0].started.history
    assert not replay[0].started.HasField("result")
    assert predict(slow.stub, "outlives", [[3.0]]) == ("1", OK([15.0], abs=1e-4))


def test_queued_job_waits_and_a_full_queue_is_refused(
    aio: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    backend = AffineBackend(epoch_delay=EPOCH_S)
    with _setup(aio, tmp_path_factory, backend, max_pending_jobs=1) as setup:
        running = setup.training.Train(train_request("running", epochs=LONG), timeout=30)
        running_id = next(running).job_id  # started: the worker has taken it
        waiting = setup.training.Train(train_request("waiting"), timeout=30)
        assert eventually(lambda: len(setup.jobs(model_name="waiting")) == 1)
        (queued,) = setup.jobs(model_name="waiting")
        assert (queued.state, queued.epoch, list(queued.history)) == (S.JOB_STATE_PENDING, 0, [])
        assert setup.job(running_id).state == S.JOB_STATE_RUNNING

        code, details = rpc_error(lambda: next(setup.training.Train(train_request("third"))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already waiting" in details
        assert setup.jobs(model_name="third") == []

        # A job cancelled while it waits never runs, and says so at once.
        cancelled = setup.training.CancelJob(tpb.JobRequest(job_id=queued.job_id))
        assert cancelled.state == S.JOB_STATE_CANCELLED
        assert setup.job(running_id).state == S.JOB_STATE_RUNNING
        setup.training.CancelJob(tpb.JobRequest(job_id=running_id))
        assert list(running)[-1].state == S.JOB_STATE_CANCELLED
        waited = list(waiting)
        assert kinds(waited) == ["error"]
        assert waited[0].state == S.JOB_STATE_CANCELLED
        assert "before it started" in waited[0].error
        assert setup.job(queued.job_id).history == []
        assert version_dirs(setup.repository, "running") == []
        assert version_dirs(setup.repository, "waiting") == []


def test_diverging_training_fails_and_keeps_the_served_version(fast: Setup) -> None:
    assert fast.train(train_request("diverges", line(2, 1)))[-1].finished.version == 1
    events = fast.train(train_request("diverges", line(2, 1), learning_rate=5000.0))
    assert kinds(events) == ["started", "error"]
    assert events[-1].state == S.JOB_STATE_FAILED
    error = events[-1].error.lower()
    assert "diverged" in error and "nan" in error
    assert fast.job(events[0].job_id).state == S.JOB_STATE_FAILED
    assert version_dirs(fast.repository, "diverges") == ["1"]
    assert predict(fast.stub, "diverges", [[1.0]]) == ("1", OK([3.0], abs=1e-4))

    new = fast.train(train_request("diverges-new", line(2, 1), learning_rate=5000.0))
    assert new[-1].state == S.JOB_STATE_FAILED
    assert version_dirs(fast.repository, "diverges-new") == []


def test_backend_refusal_fails_the_job(fast: Setup) -> None:
    # Planning accepts a CNN on images; the fake backend cannot train one.
    images = np.zeros((4, 4, 4, 1), dtype=np.float32)
    events = fast.train(
        train_request("images", inline(images, [0, 1, 0, 1]), architecture="cnn", epochs=1)
    )
    assert kinds(events) == ["started", "error"]
    assert events[-1].state == S.JOB_STATE_FAILED
    assert "fake backend trains 'linear' and 'mlp'" in events[-1].error
    assert version_dirs(fast.repository, "images") == []


def test_stopping_the_service_cancels_its_jobs(
    aio: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with _setup(aio, tmp_path_factory, AffineBackend(epoch_delay=EPOCH_S)) as setup:
        running = setup.training.Train(train_request("stopped", epochs=LONG), timeout=30)
        assert next(running).WhichOneof("event") == "started"
        queued = setup.training.Train(train_request("queued"), timeout=30)
        assert eventually(lambda: len(setup.jobs(model_name="queued")) == 1)
        jobs = setup.service.jobs
    queued.cancel()
    # Stopped within an epoch (not after LONG of them), leaving no version.
    assert {job.plan.model_name: job.state for job in jobs.list()} == {
        "stopped": JobState.CANCELLED,
        "queued": JobState.CANCELLED,
    }
    assert version_dirs(setup.repository, "stopped") == []
    assert version_dirs(setup.repository, "queued") == []


def test_unwritable_tensorboard_dir_fails_the_job(
    aio: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    not_a_directory = tmp_path_factory.mktemp("runs") / "file"
    not_a_directory.write_text("")
    with _setup(aio, tmp_path_factory, AffineBackend(), tensorboard_dir=not_a_directory) as setup:
        events = setup.train(train_request("no-runs"))
        assert kinds(events) == ["started", "error"]
        assert events[-1].state == S.JOB_STATE_FAILED
        assert "internal error" in events[-1].error
        assert setup.job(events[0].job_id).state == S.JOB_STATE_FAILED
        assert version_dirs(setup.repository, "no-runs") == []


# ---- CSV ----


def test_csv_with_default_columns_trains_and_serves(fast: Setup) -> None:
    events = fast.train(
        train_request(
            "csv-default", tpb.Dataset(csv=tpb.CsvData(path="house.csv")), architecture="mlp"
        )
    )
    assert events[-1].state == S.JOB_STATE_SUCCEEDED
    assert fast.job(events[0].job_id).dataset == "csv:house.csv"
    # Features: size and age; target: price = 2 size + 5.
    assert predict(fast.stub, "csv-default", [[4.0, 9.0]]) == ("1", OK([13.0], abs=1e-3))


def test_csv_with_explicit_columns_trains_and_serves(fast: Setup) -> None:
    csv = tpb.CsvData(path="house.csv", feature_columns=["price"], target_column="size")
    events = fast.train(train_request("csv-explicit", tpb.Dataset(csv=csv)))
    assert events[-1].state == S.JOB_STATE_SUCCEEDED
    assert predict(fast.stub, "csv-explicit", [[25.0]]) == ("1", OK([10.0], abs=1e-3))


# ---- refused orders ----


def _csv(path: str, *features: str, target: str = "") -> tpb.Dataset:
    return tpb.Dataset(
        csv=tpb.CsvData(path=path, feature_columns=list(features), target_column=target)
    )


NAN, INF = float("nan"), float("inf")
X4 = [[0.0], [1.0], [2.0], [3.0]]
Y4 = [[1.0], [2.0], [3.0], [4.0]]


def _bad(model: str, **kw: Any) -> tpb.TrainRequest:
    return train_request(model, kw.pop("dataset", inline(X4, Y4)), **kw)


def _wrong_count() -> tpb.TrainRequest:
    request = _bad("wrong-count")
    del request.dataset.inline.inputs.values[-1]
    return request


BAD_ORDERS = [
    pytest.param(_bad("arch", architecture="rnn"), "unknown architecture 'rnn'", id="architecture"),
    pytest.param(
        _bad("ds", dataset=tpb.Dataset(builtin="mnist")), "unknown dataset 'mnist'", id="builtin"
    ),
    pytest.param(
        tpb.TrainRequest(model_name="nods", architecture="linear"),
        "names no dataset",
        id="no-dataset",
    ),
    pytest.param(
        _bad("empty", dataset=tpb.Dataset(inline=tpb.InlineData())),
        "inline data is empty",
        id="empty-inline",
    ),
    pytest.param(
        _bad("rows", dataset=inline(X4, Y4[:3])), "inputs have 4 rows but targets have 3", id="rows"
    ),
    pytest.param(
        _wrong_count(), r"inline inputs shape \[4, 1\] needs 4 values, got 3", id="values"
    ),
    pytest.param(
        _bad("zero-dim", dataset=inline(np.zeros((0, 1)), np.zeros((0, 1)))),
        "must have positive dimensions",
        id="zero-rows",
    ),
    pytest.param(
        _bad("x-nan", dataset=inline([[0], [NAN], [2], [3]], Y4)),
        "inputs contain NaN or infinite",
        id="x-nan",
    ),
    pytest.param(
        _bad("x-inf", dataset=inline([[0], [INF], [2], [3]], Y4)),
        "inputs contain NaN or infinite",
        id="x-inf",
    ),
    pytest.param(
        _bad("y-nan", dataset=inline(X4, [[1], [2], [NAN], [4]])),
        "targets contain NaN or infinite",
        id="y-nan",
    ),
    pytest.param(
        _bad("y-inf", dataset=inline(X4, [[1], [2], [-INF], [4]])),
        "targets contain NaN or infinite",
        id="y-inf",
    ),
    pytest.param(
        _bad("wide", dataset=inline(X4, [[1, 2], [3, 4]])),
        r"targets must have shape \[N, 1\], got \[2, 2\]",
        id="wide-targets",
    ),
    pytest.param(
        _bad("ep0", epochs=0), "epochs must be between 1 and 100000, got 0", id="epochs-0"
    ),
    pytest.param(
        _bad("ep-1", epochs=-1), "epochs must be between 1 and 100000, got -1", id="epochs-neg"
    ),
    pytest.param(_bad("bs0", batch_size=0), "batch_size must be between 1 and", id="batch-0"),
    pytest.param(
        _bad("lr0", learning_rate=0.0),
        "learning_rate must be a finite positive number, got 0.0",
        id="lr-0",
    ),
    pytest.param(
        _bad("lr-1", learning_rate=-1.0),
        "learning_rate must be a finite positive number, got -1.0",
        id="lr-neg",
    ),
    pytest.param(
        _bad("lrnan", learning_rate=NAN),
        "learning_rate must be a finite positive number, got nan",
        id="lr-nan",
    ),
    pytest.param(
        _bad("lrinf", learning_rate=INF),
        "learning_rate must be a finite positive number, got inf",
        id="lr-inf",
    ),
    pytest.param(_bad("opt", optimizer="rmsprop"), "unknown optimizer 'rmsprop'", id="optimizer"),
    pytest.param(
        _bad("vs1", validation_split=1.0),
        r"validation_split must be in \[0, 1\), got 1.0",
        id="split-1",
    ),
    pytest.param(
        _bad("vs-", validation_split=-0.1),
        r"validation_split must be in \[0, 1\), got -0.1",
        id="split-neg",
    ),
    pytest.param(
        _bad("seed", seed=-1), "seed must be between 0 and 4294967295, got -1", id="seed-neg"
    ),
    pytest.param(
        _bad("task", architecture="cnn", dataset=tpb.Dataset(builtin="house_price")),
        "dataset 'house_price' is for regression, architecture 'cnn' does classification",
        id="task",
    ),
    pytest.param(
        _bad("csv-col", dataset=_csv("house.csv", "size", "rooms")),
        r"no column\(s\) rooms \(columns: size, age, price\)",
        id="csv-column",
    ),
    pytest.param(
        _bad("csv-text", dataset=_csv("text.csv")),
        "row 3, column 'price': 'nine' is not a number",
        id="csv-text",
    ),
    pytest.param(
        _bad("csv-up", dataset=_csv("../x.csv")),
        "CSV path '../x.csv' is outside the data directory",
        id="csv-parent",
    ),
    pytest.param(
        _bad("csv-abs", dataset=_csv("/etc/passwd")),
        "CSV path '/etc/passwd' is outside the data directory",
        id="csv-absolute",
    ),
    pytest.param(
        _bad("csv-link", dataset=_csv("escape.csv")),
        "CSV path 'escape.csv' is outside the data directory",
        id="csv-symlink",
    ),
    pytest.param(
        _bad("csv-nul", dataset=_csv("house\x00.csv")),
        r"CSV path 'house\\x00.csv' contains a NUL character",
        id="csv-nul",
    ),
    pytest.param(
        _bad("csv-latin1", dataset=_csv("latin1.csv")),
        r"CSV file 'latin1.csv' is not UTF-8 text .*; save it as UTF-8",
        id="csv-not-utf8",
    ),
    pytest.param(
        _bad("csv-field", dataset=_csv("big-field.csv")),
        "CSV file 'big-field.csv' line 3: a field is longer than 131072 characters",
        id="csv-big-field",
    ),
    pytest.param(
        _bad("csv-empty", dataset=_csv("empty.csv")),
        "CSV file 'empty.csv' is empty; it needs a header row",
        id="csv-empty",
    ),
    pytest.param(
        _bad("csv-dir", dataset=_csv("subdir")),
        "CSV path 'subdir' is a directory; name a CSV file in it",
        id="csv-directory",
    ),
    pytest.param(
        _bad("csv-nan", dataset=_csv("nan-label.csv")),
        "row 3, column 'price': 'NaN' is not a finite number",
        id="csv-nan-label",
    ),
    pytest.param(
        _bad("csv-long", dataset=_csv("x" * 300 + ".csv")),
        "cannot be used: File name too long",
        id="csv-name-too-long",
    ),
    pytest.param(_bad("a/b"), "invalid model name 'a/b'", id="name-slash"),
    pytest.param(_bad(".."), r"invalid model name '\.\.'", id="name-dots"),
    pytest.param(_bad(""), "invalid model name ''", id="name-empty"),
    pytest.param(
        _bad("other", framework="pytorch"),
        "this is the fake service; it cannot train for 'pytorch'",
        id="framework",
    ),
]


@pytest.mark.parametrize(("request_", "message"), BAD_ORDERS)
def test_bad_order_is_invalid_and_writes_nothing(
    fast: Setup, request_: tpb.TrainRequest, message: str
) -> None:
    before = (_files(fast.repository), _files(fast.runs), len(fast.jobs()))
    code, details = rpc_error(fast.train, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, details), details
    assert (_files(fast.repository), _files(fast.runs), len(fast.jobs())) == before


def test_missing_csv_is_not_found(fast: Setup) -> None:
    before = _files(fast.repository)
    code, details = rpc_error(fast.train, _bad("csv-missing", dataset=_csv("missing.csv")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no CSV file 'missing.csv'" in details
    assert _files(fast.repository) == before


def test_a_model_holding_a_users_files_is_not_trained_into(fast: Setup) -> None:
    version = fast.repository / "theirs" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"a user's file (unread: training is refused first)")
    before = _files(fast.repository)
    try:
        code, details = rpc_error(fast.train, _bad("theirs"))
        after = _files(fast.repository)
    finally:
        shutil.rmtree(version.parent)  # the module's other tests share the repository
    assert after == before
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model 'theirs' holds a user's model files (version 1, Triton's layout)" in details
