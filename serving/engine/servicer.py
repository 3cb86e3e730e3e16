"""GRPCInferenceService: translates protobuf messages to core calls and back, nothing more.

Errors are raised as `ServingError`s and turned into statuses by `serving.rpc.interceptor`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from serving.engine.dataplane import DataPlane
from serving.engine.layout import PLATFORMS
from serving.engine.manager import LoadedVersion, ModelManager
from serving.engine.model_config import VersionPolicy
from serving.errors import Unsupported
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.names import (
    CONFIG_ARCHITECTURE_PARAM,
    CONFIG_RUNTIMES_PARAM,
    EXTENSIONS,
    FRAMEWORK_PARAM,
    LOAD_CONFIG_PARAM,
    LOAD_FILE_PREFIX,
)
from serving.protocol.translate import request_from_pb, response_to_pb
from serving.rpc.interceptor import stream_infer
from serving.types import Signature

__all__ = ["InferenceServicer"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_DATATYPE_ENUM = {
    name: getattr(pb, f"TYPE_{'STRING' if name == 'BYTES' else name}")
    for name in (
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
        "BF16",
    )
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        manager: ModelManager,
        *,
        name: str,
        version: str,
        max_tensor_bytes: int | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_tensor_bytes = max_tensor_bytes
        self.manager = manager
        self.name = name
        self.version = version
        self.ready = False  # set once models are loaded, cleared when draining

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.manager.is_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.name, version=self.version, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        loaded = self.manager.get(request.name, request.version)
        versions = (
            [request.version]
            if request.version
            else [str(v) for v in self.manager.loaded_versions(request.name)]
        )
        response = pb.ModelMetadataResponse(
            name=loaded.name, versions=versions, platform=self._platform(loaded)
        )
        _fill_tensors(response, loaded.meta.signature)
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for response in stream_infer(request_iterator, self._infer):
            yield response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        # An unknown model is reported before anything about the inputs, as Triton does.
        loaded = self.manager.get(request.model_name, request.model_version)
        checked = request_from_pb(
            request, max_tensor_bytes=self.max_tensor_bytes, signature=loaded.meta.signature
        )
        return await self.dataplane.infer(checked, response_to_pb)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        loaded = self.manager.get(request.name, request.version)
        meta = loaded.meta
        platform = self._platform(loaded)
        # A user's file names Triton's backend for its platform; ours, the framework serving.
        known = PLATFORMS.get(platform) if loaded.model_file else None
        config = pb.ModelConfig(
            name=loaded.name,
            platform=platform,
            runtime=loaded.default_runtime,
            backend=known.backend if known else self.manager.backend.framework,
            version_policy=_policy_pb(self.manager.policy(loaded.name)),
            default_model_filename=loaded.model_file,
        )
        declared = self.manager.config(loaded.name)
        for group in declared.instance_groups:
            config.instance_group.add(
                kind=pb.ModelInstanceGroup.Kind.Value(group.kind),
                count=group.count,
                gpus=group.gpus,
            )
        for key, value in declared.parameters:
            config.parameters[key].string_value = value
        # Triton's convention: with max_batch_size > 0 the dims leave out the batch
        # dimension; with 0 they include it (-1).
        config.max_batch_size = loaded.max_batch_size
        skip = 1 if loaded.max_batch_size else 0
        if loaded.batching is not None:
            batching = loaded.batching
            config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
            config.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
        for spec in meta.signature.inputs:
            config.input.add(
                name=spec.name, data_type=_DATATYPE_ENUM[spec.datatype], dims=spec.shape[skip:]
            )
        for spec in meta.signature.outputs:
            config.output.add(
                name=spec.name, data_type=_DATATYPE_ENUM[spec.datatype], dims=spec.shape[skip:]
            )
        if meta.architecture:  # a user's model file has none of ours
            config.parameters[CONFIG_ARCHITECTURE_PARAM].string_value = meta.architecture
        config.parameters[FRAMEWORK_PARAM].string_value = self.manager.backend.framework
        config.parameters[CONFIG_RUNTIMES_PARAM].string_value = ",".join(loaded.models)
        return pb.ModelConfigResponse(config=config)

    def _platform(self, loaded: LoadedVersion) -> str:
        # What runs the version here, as this service's backend registers it: a version
        # another framework trained (the onnx service serves its export) names the runtime
        # serving it, not the framework that trained it (that is in its metadata).
        # A user's file is its own platform (TorchScript is pytorch_libtorch, not the eager
        # runtime that answers for our PyTorch versions).
        if loaded.model_file:
            return loaded.platform()
        registered = self.manager.backend.runtimes.get(loaded.default_runtime)
        return registered or loaded.platform()

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self.manager.get(request.name, request.version)
        response = pb.ModelStatisticsResponse()
        for (name, version), stats in sorted(self.dataplane.stats.snapshot().items()):
            if request.name and name != request.name:
                continue
            if request.version and str(version) != request.version:
                continue
            entry = response.model_stats.add(
                name=name,
                version=str(version),
                last_inference=stats.last_inference_ms,
                inference_count=stats.inference_count,
                execution_count=stats.execution_count,
            )
            infer = entry.inference_stats
            for duration, source in (
                (infer.success, stats.success),
                (infer.fail, stats.fail),
                (infer.queue, stats.queue),
                (infer.compute_input, stats.compute_input),
                (infer.compute_infer, stats.compute_infer),
                (infer.compute_output, stats.compute_output),
            ):
                duration.count, duration.ns = source.count, source.ns
            for rows, calls in sorted(stats.batches.items()):
                batch = entry.batch_stats.add(batch_size=rows)
                for duration, source in (
                    (batch.compute_input, calls.compute_input),
                    (batch.compute_infer, calls.compute_infer),
                    (batch.compute_output, calls.compute_output),
                ):
                    duration.count, duration.ns = source.count, source.ns
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self.manager.index():
            if request.ready and state != "READY":
                continue
            response.models.add(name=name, version=version, state=state, reason=reason)
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        # Triton's load with an overriding configuration or files (tritonclient's
        # `load_model(config=..., files=...)`): refused rather than silently ignored.
        overrides = sorted(
            k
            for k in request.parameters
            if k == LOAD_CONFIG_PARAM or k.startswith(LOAD_FILE_PREFIX)
        )
        if overrides:
            raise Unsupported(
                f"loading with overrides ({', '.join(overrides)}) is not supported; "
                "the model is loaded as stored in the repository"
            )
        await self.manager.aload(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        # Closing a framework model can block (it frees memory), so off the event loop.
        await asyncio.to_thread(self.manager.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _policy_pb(policy: VersionPolicy) -> pb.ModelVersionPolicy:
    if policy.kind == "all":
        return pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=policy.versions)
        )
    return pb.ModelVersionPolicy(
        latest=pb.ModelVersionPolicy.Latest(num_versions=policy.num_versions)
    )


def _fill_tensors(response: pb.ModelMetadataResponse, signature: Signature) -> None:
    for spec in signature.inputs:
        response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    for spec in signature.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
