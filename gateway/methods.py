"""The methods of the framework services the gateway forwards, each with how it is spread
over a service's replicas. `Upstream.stub` and `Upstream.training` are these tables:
`upstream.call(upstream.stub.ModelInfer, request, timeout)`.

    ONE      one replica, in turn; never retried (Train: it starts a job)
    RETRIED  one replica, in turn; on UNAVAILABLE (or CANCELLED by the server) again on
             another, within the retry budget
             (the idempotent calls: inference, metadata, the index)
    EVERY    every replica (model load and unload: a model is on all of them or none)
    OWNER    the replica that runs the job (the others answer NOT_FOUND)
    MERGED   every replica, the answers merged (ListJobs; ModelStatistics, whose entries
             `gateway.statistics` then sums)
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast

from google.protobuf.message import Message

from gateway.replica import Replica
from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import training_pb2 as tpb

__all__ = ["InferenceMethods", "Policy", "ServerStream", "TrainingMethods", "Unary"]

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


class Policy(enum.Enum):
    ONE = "one"
    RETRIED = "retried"
    EVERY = "every"
    OWNER = "owner"
    MERGED = "merged"


@dataclass(frozen=True)
class Unary(Generic[Request, Response]):
    """A unary method of a framework service and how it is spread over the replicas."""

    service: Literal["inference", "training"]
    name: str
    policy: Policy

    def bind(self, replica: Replica) -> Callable[..., Awaitable[Response]]:
        stub = replica.stub if self.service == "inference" else replica.training
        return cast(Callable[..., Awaitable[Response]], getattr(stub, self.name))


@dataclass(frozen=True)
class ServerStream(Generic[Request, Response]):
    """A server-streaming method; never retried (the stream may have started)."""

    service: Literal["inference", "training"]
    name: str
    policy: Policy

    def bind(self, replica: Replica) -> Callable[..., AsyncIterable[Response]]:
        stub = replica.stub if self.service == "inference" else replica.training
        return cast(Callable[..., AsyncIterable[Response]], getattr(stub, self.name))


class InferenceMethods:
    """`Upstream.stub`: the GRPCInferenceService methods the gateway forwards."""

    ModelReady = Unary[pb.ModelReadyRequest, pb.ModelReadyResponse](
        "inference", "ModelReady", Policy.RETRIED
    )
    ModelMetadata = Unary[pb.ModelMetadataRequest, pb.ModelMetadataResponse](
        "inference", "ModelMetadata", Policy.RETRIED
    )
    ModelConfig = Unary[pb.ModelConfigRequest, pb.ModelConfigResponse](
        "inference", "ModelConfig", Policy.RETRIED
    )
    ModelStatistics = Unary[pb.ModelStatisticsRequest, pb.ModelStatisticsResponse](
        "inference", "ModelStatistics", Policy.MERGED
    )
    ModelInfer = Unary[pb.ModelInferRequest, pb.ModelInferResponse](
        "inference", "ModelInfer", Policy.RETRIED
    )
    RepositoryIndex = Unary[pb.RepositoryIndexRequest, pb.RepositoryIndexResponse](
        "inference", "RepositoryIndex", Policy.RETRIED
    )
    RepositoryModelLoad = Unary[pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse](
        "inference", "RepositoryModelLoad", Policy.EVERY
    )
    RepositoryModelUnload = Unary[
        pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
    ]("inference", "RepositoryModelUnload", Policy.EVERY)


class TrainingMethods:
    """`Upstream.training`: the TrainingService methods the gateway forwards."""

    Train = ServerStream[tpb.TrainRequest, tpb.TrainEvent]("training", "Train", Policy.ONE)
    WatchJob = ServerStream[tpb.JobRequest, tpb.TrainEvent]("training", "WatchJob", Policy.OWNER)
    GetJob = Unary[tpb.JobRequest, tpb.Job]("training", "GetJob", Policy.OWNER)
    CancelJob = Unary[tpb.JobRequest, tpb.Job]("training", "CancelJob", Policy.OWNER)
    ListJobs = Unary[tpb.ListJobsRequest, tpb.ListJobsResponse](
        "training", "ListJobs", Policy.MERGED
    )
