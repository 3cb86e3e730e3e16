"""Training jobs: queued, run one at a time off the event loop, observable while they run.

A job lives independently of the call that started it: its events are kept, so a client can
disconnect and come back (`follow`) or ask for its state (`get`). Cancelling stops it at the
end of the current epoch; a cancelled or failed job leaves no model version (the repository
commits a version only when training returns).

A job's state changes only under its lock and only along `_NEXT` (PENDING -> RUNNING or
CANCELLED; RUNNING -> SUCCEEDED, FAILED or CANCELLED; an ended job never changes), so a cancel
racing a job's start either wins (the job never runs) or finds it RUNNING and asks it to stop;
a running job shows CANCELLED only once its training has stopped. An ended job drops its
training data: only its description, history and result stay in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal

import numpy as np

from serving.backend import Backend, TrainSpec
from serving.engine.manager import ModelManager
from serving.engine.repository import ModelRepository
from serving.errors import BackendUnavailable, NotFound, ResourceExhausted, ServingError
from serving.training.data import TrainingLimits, TrainOrder, TrainPlan, plan_training
from serving.training.tensorboard import RunLog
from serving.training.trainer import train_version

__all__ = ["Job", "JobEvent", "JobManager", "JobResult", "JobState", "Progress"]

logger = logging.getLogger(__name__)


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_DONE = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
# The only transitions a job makes; anything else is refused (see `JobManager._emit`).
_NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    **{state: frozenset() for state in _DONE},
}


@dataclass(frozen=True, slots=True)
class Progress:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    metric: str
    val_metric: float | None
    samples_per_second: float
    elapsed_seconds: float
    eta_seconds: float


@dataclass(frozen=True, slots=True)
class JobResult:
    model_name: str
    version: int
    path: str
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class JobEvent:
    kind: Literal["started", "progress", "finished", "failed", "cancelled"]
    state: JobState
    progress: Progress | None = None
    result: JobResult | None = None
    error: str = ""


class JobCancelled(Exception):
    """Raised from the epoch callback to stop a job the client cancelled."""


class TrainingDiverged(ServingError):
    pass


@dataclass
class Job:
    id: str
    framework: str
    plan: TrainPlan
    tensorboard_dir: Path
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    state: JobState = JobState.PENDING
    error: str = ""
    history: list[Progress] = field(default_factory=list)
    result: JobResult | None = None
    events: list[JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Swapped for a fresh one on every event; set (on the event loop) to wake followers.
    waiter: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.state in _DONE

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, asyncio.Event()
        waiter.set()

    def drop_data(self) -> None:
        """Lets go of the training data (a job may hold hundreds of MB of it), keeping the
        plan's description: listings and `GetJob` still show what the job was. Empty arrays
        of the same dtype and row shape, not views, which would keep the data alive."""
        plan = self.plan
        self.plan = replace(
            plan,
            x=_no_rows(plan.x),
            y=_no_rows(plan.y),
            x_val=_no_rows(plan.x_val),
            y_val=_no_rows(plan.y_val),
            x_test=None,
            y_test=None,
        )


def _no_rows(array: np.ndarray) -> np.ndarray:
    return np.empty((0, *array.shape[1:]), dtype=array.dtype)


class JobManager:
    def __init__(
        self,
        backend: Backend,
        repository: ModelRepository,
        models: ModelManager,
        *,
        data_dir: Path,
        tensorboard_dir: Path,
        max_pending: int = 8,
        keep_finished: int = 100,
        stop_timeout_s: float = 30.0,
        limits: TrainingLimits | None = None,
    ) -> None:
        self.backend = backend
        self.repository = repository
        self.models = models
        self.data_dir = data_dir
        self.tensorboard_dir = tensorboard_dir
        self.max_pending = max_pending
        self.keep_finished = keep_finished
        self.stop_timeout_s = stop_timeout_s
        self.limits = limits or TrainingLimits()
        self._jobs: dict[str, Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # One job at a time (two trainings would only fight over the same cores), on a daemon
        # thread: shutdown waits for a running epoch at most stop_timeout_s, and a thread the
        # interpreter joined at exit would make the process wait for it anyway.
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False

    # ---- called on the event loop ----

    async def submit(self, order: TrainOrder) -> Job:
        """Validates the order (InvalidInput, nothing written) and queues a job."""
        if self._closed:
            raise BackendUnavailable("the service is shutting down; send the job to another")
        self._loop = asyncio.get_running_loop()
        # Reading a CSV (up to MAX_CSV_BYTES) or a built-in dataset blocks: off the loop.
        plan = await asyncio.to_thread(
            plan_training, order, self.data_dir, self.limits, self.repository
        )
        pending = sum(1 for job in self._jobs.values() if job.state is JobState.PENDING)
        if pending >= self.max_pending:
            raise ResourceExhausted(
                f"{pending} training jobs are already waiting; try again when one has started"
            )
        job_id = f"{self.backend.framework}-{uuid.uuid4().hex[:12]}"
        job = Job(
            id=job_id,
            framework=self.backend.framework,
            plan=plan,
            tensorboard_dir=self.tensorboard_dir
            / plan.model_name
            / self.backend.framework
            / job_id,
        )
        self._jobs[job_id] = job
        self._forget_old()
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="train", daemon=True)
            self._worker.start()
        self._queue.put(job)
        logger.info("queued job %s: %s on %s", job_id, plan.architecture.name, plan.dataset)
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no training job '{job_id}' on this {self.backend.framework} service")
        return job

    def list(self, model_name: str = "") -> list[Job]:
        jobs = sorted(self._jobs.values(), key=lambda job: job.created)
        return [job for job in jobs if not model_name or job.plan.model_name == model_name]

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one at the end of its epoch (it shows
        RUNNING until then); an ended one is returned unchanged."""
        job = self.get(job_id)
        self._cancel(job)
        return job

    def _cancel(self, job: Job) -> None:
        # One lock decides: the training thread either started the job before this (then it
        # sees the request at the end of its epoch) or finds it CANCELLED and never runs it.
        with job.lock:
            if job.state is JobState.RUNNING:
                job.cancel_requested.set()
            elif job.state is JobState.PENDING:
                self._record(
                    job,
                    JobEvent("cancelled", JobState.CANCELLED, error="cancelled before it started"),
                )
        self._wake(job)

    async def follow(self, job: Job) -> AsyncIterator[JobEvent]:
        """Every event of `job` from the first, then live ones until it ends."""
        seen = 0
        while True:
            with job.lock:
                new, done = job.events[seen:], job.done
            for event in new:
                yield event
            seen += len(new)
            if done:
                return
            waiter = job.waiter
            with job.lock:
                if len(job.events) > seen or job.done:
                    continue
            await waiter.wait()

    def cancel_all(self) -> None:
        """Cancels every job (running ones stop within an epoch); does not wait."""
        for job in list(self._jobs.values()):
            self._cancel(job)

    def shutdown(self) -> bool:
        """Cancels every job and waits for a running one's epoch to end, at most
        stop_timeout_s. False if it did not end in time: the service then exits without it
        (its version is never committed; its staging directory stays hidden)."""
        self._closed = True
        self.cancel_all()
        worker = self._worker
        if worker is None:
            return True
        self._queue.put(None)
        worker.join(self.stop_timeout_s)
        if worker.is_alive():
            running = [job.id for job in self._jobs.values() if job.state is JobState.RUNNING]
            logger.warning(
                "training job %s did not stop within %.1fs of being cancelled; leaving it",
                ", ".join(running) or "?",
                self.stop_timeout_s,
            )
            return False
        return True

    def _forget_old(self) -> None:
        finished = sorted(
            (job for job in self._jobs.values() if job.done), key=lambda job: job.finished
        )
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    # ---- called on the training thread ----

    def _emit(self, job: Job, event: JobEvent) -> bool:
        """Records `event` and wakes followers. False (nothing recorded) if it would move the
        job along a transition `_NEXT` does not allow."""
        with job.lock:
            recorded = self._record(job, event)
        if recorded:
            self._wake(job)
        return recorded

    def _record(self, job: Job, event: JobEvent) -> bool:
        """`_emit` with `job.lock` held, without the wake-up."""
        if event.kind == "progress":
            if job.state is not JobState.RUNNING:
                return False
            assert event.progress is not None
            job.history.append(event.progress)
        else:
            if event.state not in _NEXT[job.state]:
                return False
            job.state = event.state
            if event.result is not None:
                job.result = event.result
            if event.error:
                job.error = event.error
            if job.done:
                job.finished = time.time()
                job.drop_data()
        job.events.append(event)
        return True

    def _wake(self, job: Job) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(job.wake)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run(job)
            except Exception:  # _run reports its own failures; this keeps the worker alive
                logger.exception("training job %s could not be run", job.id)

    def _run(self, job: Job) -> None:
        # Refused if a cancel got the job first: it never runs.
        if not self._emit(job, JobEvent("started", JobState.RUNNING)):
            return
        # Emitted once _train's frame (the data, the training spec, a traceback) is gone, so
        # that the end drops the last reference to the job's data.
        end = self._train(job)
        self._emit(job, end)

    def _train(self, job: Job) -> JobEvent:
        """Trains and commits the job's version; the event that ends the job."""
        plan = job.plan
        metric = "accuracy" if plan.architecture.task == "classification" else "rmse"
        test = None if plan.x_test is None or plan.y_test is None else (plan.x_test, plan.y_test)
        try:
            # Closed (flushed) before the job reports how it ended, so its TensorBoard run is
            # complete by then; a run directory that cannot be made fails the job.
            with closing(RunLog(job.tensorboard_dir, metric)) as run_log:
                spec = TrainSpec(
                    architecture=plan.architecture.name,
                    x=plan.x,
                    y=plan.y,
                    x_val=plan.x_val,
                    y_val=plan.y_val,
                    input_name=plan.input_name,
                    output_name=plan.output_name,
                    task=plan.architecture.task,
                    num_classes=plan.num_classes,
                    epochs=plan.epochs,
                    batch_size=plan.batch_size,
                    learning_rate=plan.learning_rate,
                    optimizer=plan.optimizer,
                    seed=plan.seed,
                    device=plan.device,
                    on_epoch=_EpochReporter(self, job, run_log, metric),
                )
                version, metrics = train_version(
                    self.repository,
                    self.backend,
                    plan.model_name,
                    spec,
                    plan.dataset,
                    hyperparameters=plan.hyperparameters,
                    test=test,
                    replace_signature=plan.replace_signature,
                )
            path = self.repository.path(plan.model_name, version)
            self.models.load(plan.model_name)  # served from now on
            logger.info(
                "job %s stored %s version %d: %s", job.id, plan.model_name, version, metrics
            )
            result = JobResult(plan.model_name, version, str(path), metrics)
            return JobEvent("finished", JobState.SUCCEEDED, result=result)
        except JobCancelled:
            error = f"cancelled after epoch {len(job.history)}"
            return JobEvent("cancelled", JobState.CANCELLED, error=error)
        except ServingError as exc:
            return JobEvent("failed", JobState.FAILED, error=exc.message)
        except Exception as exc:
            logger.exception("job %s failed", job.id)
            error = f"internal error ({type(exc).__name__}); the service log has details"
            return JobEvent("failed", JobState.FAILED, error=error)


class _EpochReporter:
    """The epoch callback handed to the backend: progress, TensorBoard, NaN and cancel checks."""

    def __init__(self, jobs: JobManager, job: Job, run_log: RunLog, metric: str) -> None:
        self.jobs, self.job, self.run_log, self.metric = jobs, job, run_log, metric
        self.start = self.last = time.monotonic()
        self.rows = len(job.plan.x)

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        now = time.monotonic()
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged: the loss became {loss} at epoch {epoch}; "
                "try a smaller learning rate"
            )
        epochs = self.job.plan.epochs
        elapsed = now - self.start
        progress = Progress(
            epoch=epoch,
            epochs=epochs,
            train_loss=loss,
            val_loss=metrics.get("val_loss"),
            metric=self.metric,
            val_metric=metrics.get("val_metric"),
            samples_per_second=self.rows / max(now - self.last, 1e-9),
            elapsed_seconds=elapsed,
            eta_seconds=elapsed / epoch * (epochs - epoch),
        )
        self.last = now
        self.run_log.epoch(epoch, {**metrics, "samples_per_second": progress.samples_per_second})
        self.jobs._emit(self.job, JobEvent("progress", JobState.RUNNING, progress=progress))
        if self.job.cancel_requested.is_set():
            raise JobCancelled
