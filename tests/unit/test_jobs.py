"""The job manager without gRPC: following a job, forgetting old ones, and shutting down with
jobs running and waiting."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serving.backend import TrainResult, TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.manager import ModelManager
from serving.engine.repository import ModelRepository
from serving.errors import BackendUnavailable, NotFound
from serving.training.data import InlineData, TrainOrder
from serving.training.jobs import _DONE, _NEXT, Job, JobEvent, JobManager, JobState

X = np.arange(10, dtype=np.float32).reshape(-1, 1)
WAIT_S = 30.0


def _manager(tmp_path: Path, backend: AffineBackend, **kw: int) -> JobManager:
    repository = ModelRepository(tmp_path / "models")
    return JobManager(
        backend,
        repository,
        ModelManager(repository, backend),
        data_dir=tmp_path / "data",
        tensorboard_dir=tmp_path / "runs",
        **kw,
    )


def _order(model: str, epochs: int = 2) -> TrainOrder:
    return TrainOrder(model, "linear", InlineData(X, 2 * X), epochs=epochs)


async def _events(jobs: JobManager, model: str, epochs: int = 2) -> list[JobEvent]:
    job = await jobs.submit(_order(model, epochs))
    return [event async for event in jobs.follow(job)]


def test_follow_gives_every_event_live_and_again_after_the_end(tmp_path: Path) -> None:
    jobs = _manager(tmp_path, AffineBackend())

    async def scenario() -> tuple[list[JobEvent], list[JobEvent]]:
        job = await jobs.submit(_order("m", 3))
        live = [event async for event in jobs.follow(job)]
        return live, [event async for event in jobs.follow(job)]

    live, replay = asyncio.run(scenario())
    jobs.shutdown()
    assert [e.kind for e in live] == ["started", "progress", "progress", "progress", "finished"]
    assert replay == live
    assert live[-1].result is not None and live[-1].result.version == 1
    assert [e.progress.epoch for e in live if e.progress is not None] == [1, 2, 3]


def test_old_finished_jobs_are_forgotten(tmp_path: Path) -> None:
    jobs = _manager(tmp_path, AffineBackend(), keep_finished=2)

    async def scenario() -> list[str]:
        ids = []
        for n in range(4):
            job = await jobs.submit(_order(f"m{n}"))
            ids.append(job.id)
            [_ async for _ in jobs.follow(job)]
        return ids

    ids = asyncio.run(scenario())
    jobs.shutdown()
    # Forgetting happens at submit: the last submit saw 3 finished and kept 2.
    assert [job.id for job in jobs.list()] == ids[1:]
    with pytest.raises(NotFound, match=ids[0]):
        jobs.get(ids[0])


def test_shutdown_cancels_running_and_waiting_jobs(tmp_path: Path) -> None:
    jobs = _manager(tmp_path, AffineBackend(epoch_delay=0.01))

    async def scenario() -> list[JobState]:
        running = await jobs.submit(_order("running", 10_000))
        waiting = await jobs.submit(_order("waiting"))
        follower = jobs.follow(running)
        assert (await anext(follower)).kind == "started"
        await asyncio.to_thread(jobs.shutdown)
        return [running.state, waiting.state]

    assert asyncio.run(scenario()) == [JobState.CANCELLED, JobState.CANCELLED]
    (running, waiting) = jobs.list()
    assert running.error.startswith("cancelled after epoch")
    assert waiting.error == "cancelled before it started"
    assert waiting.history == []
    assert not list((tmp_path / "models").glob("*/[0-9]*"))


class _Watching(AffineBackend):
    """Records the job's state at every epoch, and can hold a training until released."""

    def __init__(self) -> None:
        super().__init__()
        self.job: Job | None = None
        self.states: list[JobState] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        # Set: a run of more than one epoch waits here after its first epoch is reported, so
        # a test can act between two epochs however fast the fake trains.
        self.between_epochs: threading.Event | None = None

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(WAIT_S)
        on_epoch = spec.on_epoch
        assert on_epoch is not None

        def watched(epoch: int, metrics: Mapping[str, float]) -> None:
            if self.job is not None and spec.x is self.job.plan.x:
                self.states.append(self.job.state)
            on_epoch(epoch, metrics)
            if epoch == 1 and spec.epochs > 1 and self.between_epochs is not None:
                assert self.between_epochs.wait(WAIT_S)

        return super().train(replace(spec, on_epoch=watched), version_dir)


class _CancelAt:
    """A job's lock that, at the training thread's k-th acquisition, first lets a cancel run
    to its end in another thread: every point where a cancel can meet the training thread."""

    def __init__(self, jobs: JobManager, job: Job, k: int) -> None:
        self.jobs, self.job, self.k = jobs, job, k
        self.inner = threading.Lock()
        self.count = 0
        self.fired = False

    def __enter__(self) -> None:
        if threading.current_thread().name.startswith("train"):
            self.count += 1
            if self.count == self.k:
                self.fired = True
                canceller = threading.Thread(target=self.jobs.cancel, args=(self.job.id,))
                canceller.start()
                canceller.join(WAIT_S)
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def _check_transitions(job: Job) -> None:
    """One terminal event, last; every state change one `_NEXT` allows."""
    changes = [event.state for event in job.events if event.kind != "progress"]
    assert [state for state in changes if state in _DONE] == [job.state]
    assert job.events[-1].state == job.state
    for before, after in zip([JobState.PENDING, *changes], changes, strict=False):
        assert after in _NEXT[before], (before, after)


def test_a_cancel_at_every_point_of_a_start_never_overlaps_training(tmp_path: Path) -> None:
    backend = _Watching()
    jobs = _manager(tmp_path, backend)
    epochs = 3
    # The training thread takes the lock to start, once per epoch and to end: 5 times.
    outcomes = {}

    async def one(k: int) -> Job:
        backend.job, backend.states, backend.hold = None, [], threading.Event()
        backend.entered.clear()
        blocker = await jobs.submit(_order(f"blocker{k}", 1))
        assert await asyncio.to_thread(backend.entered.wait, WAIT_S)
        job = await jobs.submit(_order(f"m{k}", epochs))
        lock = _CancelAt(jobs, job, k)
        job.lock = lock  # type: ignore[assignment]
        backend.job = job
        backend.hold.set()
        [_ async for _ in jobs.follow(blocker)]
        [_ async for _ in jobs.follow(job)]
        assert lock.fired == (k <= lock.count)
        return job

    for k in range(1, epochs + 4):
        job = asyncio.run(one(k))
        _check_transitions(job)
        # The job read RUNNING at every epoch it trained: never CANCELLED while training.
        assert backend.states == [JobState.RUNNING] * len(job.history)
        outcomes[k] = (job.state, len(job.history), job.error)
        versions = list((tmp_path / "models" / f"m{k}").glob("[0-9]*"))
        assert len(versions) == (job.state is JobState.SUCCEEDED)
    jobs.shutdown()
    assert outcomes == {
        1: (JobState.CANCELLED, 0, "cancelled before it started"),
        2: (JobState.CANCELLED, 1, "cancelled after epoch 1"),
        3: (JobState.CANCELLED, 2, "cancelled after epoch 2"),
        4: (JobState.CANCELLED, 3, "cancelled after epoch 3"),
        # Past its last epoch a job completes; then a cancel leaves it as it is.
        5: (JobState.SUCCEEDED, 3, ""),
        6: (JobState.SUCCEEDED, 3, ""),
    }


def test_cancel_racing_the_start_many_times(tmp_path: Path) -> None:
    backend = _Watching()
    jobs = _manager(tmp_path, backend, max_pending=1000)

    async def scenario() -> list[Job]:
        submitted = []
        for n in range(200):
            job = await jobs.submit(_order(f"m{n}", 1))
            # Cancelled from another thread while the training thread may be starting it.
            threading.Thread(target=jobs.cancel, args=(job.id,)).start()
            submitted.append(job)
        for job in submitted:
            [_ async for _ in jobs.follow(job)]
        return submitted

    for job in asyncio.run(scenario()):
        _check_transitions(job)
        if job.state is JobState.CANCELLED:
            assert not (tmp_path / "models" / job.plan.model_name).exists()
        else:
            assert job.state is JobState.SUCCEEDED
    jobs.shutdown()
    assert JobState.CANCELLED not in backend.states


def test_cancelling_an_ended_job_changes_nothing(tmp_path: Path) -> None:
    jobs = _manager(tmp_path, AffineBackend())

    async def scenario() -> Job:
        job = await jobs.submit(_order("m"))
        [_ async for _ in jobs.follow(job)]
        return job

    job = asyncio.run(scenario())
    events, finished = list(job.events), job.finished
    assert jobs.cancel(job.id) is job
    assert (job.state, job.events, job.finished) == (JobState.SUCCEEDED, events, finished)
    assert not job.cancel_requested.is_set()
    jobs.shutdown()


@pytest.mark.parametrize("ending", ["succeeded", "failed", "cancelled", "cancelled_waiting"])
def test_an_ended_job_lets_go_of_its_training_data(tmp_path: Path, ending: str) -> None:
    backend = _Watching()
    jobs = _manager(tmp_path, backend)
    rows = np.arange(20_000, dtype=np.float32).reshape(-1, 1)
    gate = backend.between_epochs = threading.Event() if ending == "cancelled" else None

    async def scenario() -> tuple[Job, list[weakref.ref[np.ndarray]]]:
        backend.hold = threading.Event()
        first = await jobs.submit(_order("first", 1))
        assert await asyncio.to_thread(backend.entered.wait, WAIT_S)
        learning_rate = 1e6 if ending == "failed" else None  # the fake's loss becomes NaN
        order = TrainOrder("m", "linear", InlineData(rows, rows), epochs=3)
        job = await jobs.submit(replace(order, learning_rate=learning_rate))
        data = [job.plan.x, job.plan.y, job.plan.x_val, job.plan.y_val]
        refs = [weakref.ref(array) for array in data]
        del data
        if ending == "cancelled_waiting":
            jobs.cancel(job.id)
        backend.hold.set()
        if ending == "cancelled":
            follower = jobs.follow(job)
            while (await anext(follower)).kind != "progress":
                pass
            jobs.cancel(job.id)
            # Only now may the second epoch start (and see the cancel): a fast run finished
            # all three epochs between the progress event and the cancel.
            assert gate is not None
            gate.set()
        [_ async for _ in jobs.follow(first)]
        [_ async for _ in jobs.follow(job)]
        return job, refs

    job, refs = asyncio.run(scenario())
    jobs.shutdown()
    assert job.state is {"succeeded": JobState.SUCCEEDED, "failed": JobState.FAILED}.get(
        ending, JobState.CANCELLED
    )
    assert all(ref() is None for ref in refs)
    # What the job was stays: it is still listed and described.
    assert job.plan.model_name == "m" and job.plan.epochs == 3
    assert job.plan.x.shape == (0, 1) and job.plan.x.dtype == np.float32
    assert jobs.list("m") == [job]


def test_shutdown_waits_for_a_running_epoch_only_so_long(tmp_path: Path) -> None:
    backend = _Watching()
    repository = ModelRepository(tmp_path / "models")
    jobs = JobManager(
        backend,
        repository,
        ModelManager(repository, backend),
        data_dir=tmp_path / "data",
        tensorboard_dir=tmp_path / "runs",
        stop_timeout_s=0.2,
    )

    async def scenario() -> Job:
        backend.hold = threading.Event()
        job = await jobs.submit(_order("stuck", 2))
        assert await asyncio.to_thread(backend.entered.wait, WAIT_S)
        return job

    job = asyncio.run(scenario())
    start = time.monotonic()
    assert jobs.shutdown() is False
    assert time.monotonic() - start < 5
    assert job.state is JobState.RUNNING and job.cancel_requested.is_set()
    # The epoch ends later: the job stops there, leaving no version.
    backend.hold.set()
    assert _wait_for(lambda: job.done)
    assert job.state is JobState.CANCELLED
    assert not (tmp_path / "models" / "stuck").exists()


def test_no_job_is_taken_after_shutdown(tmp_path: Path) -> None:
    jobs = _manager(tmp_path, AffineBackend())
    assert jobs.shutdown() is True
    with pytest.raises(BackendUnavailable, match="shutting down"):
        asyncio.run(jobs.submit(_order("m")))


def _wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
