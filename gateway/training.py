"""The gateway's TrainingService: Train goes to the framework the client names (field
`framework`, metadata `x-framework`) or the model's default; job calls go to the service whose
name starts the job id; ListJobs merges both unless a framework is named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import grpc

from gateway.routing import FRAMEWORK_PARAM, Router
from gateway.upstream import Upstream
from serving.errors import NotFound
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc

__all__ = ["GatewayTrainingServicer"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GatewayTrainingServicer(tpb_grpc.TrainingServiceServicer):
    def __init__(self, upstreams: Mapping[str, Upstream], router: Router, *, timeout: float):
        self.upstreams = dict(upstreams)
        self.router = router
        self.timeout = timeout

    def _by_job(self, job_id: str) -> Upstream:
        framework = job_id.split("-", 1)[0]
        upstream = self.upstreams.get(framework)
        if upstream is None:
            raise NotFound(
                f"no training job '{job_id}' (job ids start with the framework that runs them: "
                f"{', '.join(f'{name}-...' for name in self.upstreams)})"
            )
        return upstream

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self.timeout if remaining is None else max(0.0, min(self.timeout, remaining))

    async def Train(
        self, request: tpb.TrainRequest, context: Context
    ) -> AsyncIterator[tpb.TrainEvent]:
        named = {FRAMEWORK_PARAM: request.framework} if request.framework else None
        # By where the model is known to live, without a fresh look on a miss: a model that
        # is nowhere yet is what training usually makes.
        framework = await self.router.choose(request.model_name, _metadata(context), named)
        forwarded = tpb.TrainRequest()
        forwarded.CopyFrom(request)
        forwarded.framework = framework
        upstream = self.upstreams[framework]
        # Training outlives any fixed upstream timeout: only the client's own deadline holds.
        async for event in upstream.stream(
            upstream.training.Train, forwarded, context.time_remaining()
        ):
            yield event

    async def WatchJob(
        self, request: tpb.JobRequest, context: Context
    ) -> AsyncIterator[tpb.TrainEvent]:
        upstream = self._by_job(request.job_id)
        async for event in upstream.stream(
            upstream.training.WatchJob, request, context.time_remaining()
        ):
            yield event

    async def GetJob(self, request: tpb.JobRequest, context: Context) -> tpb.Job:
        upstream = self._by_job(request.job_id)
        return await upstream.call(upstream.training.GetJob, request, self._deadline(context))

    async def CancelJob(self, request: tpb.JobRequest, context: Context) -> tpb.Job:
        upstream = self._by_job(request.job_id)
        return await upstream.call(upstream.training.CancelJob, request, self._deadline(context))

    async def ListJobs(
        self, request: tpb.ListJobsRequest, context: Context
    ) -> tpb.ListJobsResponse:
        named = {FRAMEWORK_PARAM: request.framework} if request.framework else None
        chosen = self.router.explicit(_metadata(context), named)
        targets = [self.upstreams[chosen]] if chosen else list(self.upstreams.values())
        timeout = self._deadline(context)
        answers = await asyncio.gather(
            *(u.call(u.training.ListJobs, request, timeout) for u in targets)
        )
        jobs = sorted(
            (job for answer in answers for job in answer.jobs), key=lambda job: job.created_unix
        )
        return tpb.ListJobsResponse(jobs=jobs)
