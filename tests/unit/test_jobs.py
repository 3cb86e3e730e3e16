"""The job manager without gRPC: following a job, forgetting old ones, and shutting down with
jobs running and waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.errors import NotFound
from serving.fake import AffineBackend
from serving.jobs import JobEvent, JobManager, JobState
from serving.manager import ModelManager
from serving.repository import ModelRepository
from serving.training_data import InlineData, TrainOrder

X = np.arange(10, dtype=np.float32).reshape(-1, 1)


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
