"""TrainingService: translates twinserve.v1 training messages to the job manager and back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import numpy as np

from serving.errors import InvalidInput, Unsupported
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.training.data import BuiltinData, CsvData, InlineData, TrainOrder
from serving.training.jobs import Job, JobEvent, JobManager, JobState, Progress

__all__ = ["TrainingServicer", "job_to_pb"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# Inline inputs are at most [N, height, width, channels] (the CNN's), targets [N, 1].
_RANKS = {"inputs": "[N, H, W, C]", "targets": "[N, 1]"}

_STATES = {
    JobState.PENDING: tpb.JOB_STATE_PENDING,
    JobState.RUNNING: tpb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: tpb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: tpb.JOB_STATE_FAILED,
    JobState.CANCELLED: tpb.JOB_STATE_CANCELLED,
}


def _tensor(message: tpb.Tensor, what: str, max_rank: int) -> np.ndarray:
    if len(message.shape) > max_rank:
        # Checked before anything looks at the dimensions: a shape of thousands of huge
        # dimensions would otherwise be multiplied out on the event loop.
        raise InvalidInput(
            f"inline {what} have {len(message.shape)} dimensions; at most {max_rank} "
            f"({_RANKS[what]}) are trained on"
        )
    shape = tuple(message.shape)
    if not shape and not message.values:
        # Unset: without this, a rank-0 shape "needs 1 value", which hides the mistake.
        raise InvalidInput(f"inline data is empty: the {what} tensor has no shape and no values")
    if any(dim <= 0 for dim in shape):
        raise InvalidInput(f"inline {what} shape {list(shape)} must have positive dimensions")
    if math.prod(shape) != len(message.values):
        raise InvalidInput(
            f"inline {what} shape {list(shape)} needs {math.prod(shape)} values, "
            f"got {len(message.values)}"
        )
    return np.asarray(message.values, dtype=np.float32).reshape(shape)


def order_from_pb(request: tpb.TrainRequest) -> TrainOrder:
    source = request.dataset.WhichOneof("source")
    dataset: BuiltinData | InlineData | CsvData | None = None
    if source == "builtin":
        dataset = BuiltinData(request.dataset.builtin)
    elif source == "inline":
        inline = request.dataset.inline
        dataset = InlineData(
            _tensor(inline.inputs, "inputs", 4), _tensor(inline.targets, "targets", 2)
        )
    elif source == "csv":
        csv = request.dataset.csv
        dataset = CsvData(csv.path, tuple(csv.feature_columns), csv.target_column)
    hp = request.hyperparameters
    return TrainOrder(
        model_name=request.model_name,
        architecture=request.architecture,
        dataset=dataset,
        epochs=hp.epochs if hp.HasField("epochs") else None,
        batch_size=hp.batch_size if hp.HasField("batch_size") else None,
        learning_rate=hp.learning_rate if hp.HasField("learning_rate") else None,
        optimizer=hp.optimizer if hp.HasField("optimizer") else None,
        seed=hp.seed if hp.HasField("seed") else None,
        validation_split=hp.validation_split if hp.HasField("validation_split") else None,
        device=request.device,
        replace_signature=request.replace_signature,
    )


def _progress(progress: Progress) -> tpb.EpochProgress:
    message = tpb.EpochProgress(
        epoch=progress.epoch,
        epochs=progress.epochs,
        train_loss=progress.train_loss,
        metric=progress.metric,
        samples_per_second=progress.samples_per_second,
        elapsed_seconds=progress.elapsed_seconds,
        eta_seconds=progress.eta_seconds,
    )
    if progress.val_loss is not None:
        message.val_loss = progress.val_loss
    if progress.val_metric is not None:
        message.val_metric = progress.val_metric
    return message


def job_to_pb(job: Job, *, history: bool = True) -> tpb.Job:
    with job.lock:
        plan = job.plan
        message = tpb.Job(
            job_id=job.id,
            framework=job.framework,
            model_name=plan.model_name,
            architecture=plan.architecture.name,
            dataset=plan.dataset,
            device=plan.device,
            state=_STATES[job.state],
            error=job.error,
            epoch=job.history[-1].epoch if job.history else 0,
            epochs=plan.epochs,
            history=[_progress(p) for p in job.history] if history else [],
            hyperparameters=tpb.HyperParameters(
                epochs=plan.epochs,
                batch_size=plan.batch_size,
                learning_rate=plan.learning_rate,
                optimizer=plan.optimizer,
                seed=plan.seed,
                validation_split=plan.validation_split,
            ),
            created_unix=job.created,
            finished_unix=job.finished,
            tensorboard_dir=str(job.tensorboard_dir),
        )
        if job.result is not None:
            message.result.CopyFrom(_result(job))
    return message


def _result(job: Job) -> tpb.JobResult:
    assert job.result is not None
    result = job.result
    return tpb.JobResult(
        model_name=result.model_name,
        version=result.version,
        path=result.path,
        metrics=result.metrics,
    )


def _event(job: Job, event: JobEvent) -> tpb.TrainEvent:
    message = tpb.TrainEvent(job_id=job.id, state=_STATES[event.state])
    if event.kind == "started":
        # The job as it was when it started, also when the event is replayed later.
        started = job_to_pb(job, history=False)
        started.state = tpb.JOB_STATE_RUNNING
        started.epoch = 0
        started.error = ""
        started.finished_unix = 0
        started.ClearField("result")
        message.started.CopyFrom(started)
    elif event.progress is not None:
        message.progress.CopyFrom(_progress(event.progress))
    elif event.result is not None:
        message.finished.CopyFrom(_result(job))
    else:
        message.error = event.error
    return message


class TrainingServicer(tpb_grpc.TrainingServiceServicer):
    def __init__(self, jobs: JobManager, framework: str, *, trains: bool = True) -> None:
        self.jobs = jobs
        self.framework = framework
        self.trains = trains

    async def Train(
        self, request: tpb.TrainRequest, context: Context
    ) -> AsyncIterator[tpb.TrainEvent]:
        if request.framework and request.framework != self.framework:
            raise InvalidInput(
                f"this is the {self.framework} service; it cannot train for "
                f"'{request.framework}' (send it through the gateway)"
            )
        if not self.trains:
            raise Unsupported(
                f"the {self.framework} service does not train: it serves models that other "
                "frameworks' services trained; train with one of those"
            )
        job = await self.jobs.submit(order_from_pb(request))
        # If the client goes away this generator is cancelled; the job is not.
        async for event in self.jobs.follow(job):
            yield _event(job, event)

    async def WatchJob(
        self, request: tpb.JobRequest, context: Context
    ) -> AsyncIterator[tpb.TrainEvent]:
        job = self.jobs.get(request.job_id)
        async for event in self.jobs.follow(job):
            yield _event(job, event)

    async def GetJob(self, request: tpb.JobRequest, context: Context) -> tpb.Job:
        return job_to_pb(self.jobs.get(request.job_id))

    async def ListJobs(
        self, request: tpb.ListJobsRequest, context: Context
    ) -> tpb.ListJobsResponse:
        if request.framework and request.framework != self.framework:
            return tpb.ListJobsResponse()
        return tpb.ListJobsResponse(
            # Summaries: a job's per-epoch history can be long; GetJob returns it.
            jobs=[job_to_pb(job, history=False) for job in self.jobs.list(request.model_name)]
        )

    async def CancelJob(self, request: tpb.JobRequest, context: Context) -> tpb.Job:
        return job_to_pb(self.jobs.cancel(request.job_id))
