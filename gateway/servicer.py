"""The gateway's GRPCInferenceService: picks a framework per call (`gateway.routing`) and
forwards the message unchanged, with a deadline; mirrors inference to a shadow framework when
the model's policy says so. Upstream statuses pass through (see `Upstream.call`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import grpc

from gateway.index import index_with_frameworks
from gateway.routing import FRAMEWORK_PARAM, Router
from gateway.shadow import Shadow
from gateway.statistics import merge_statistics, statistics_frameworks
from gateway.upstream import Upstream
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import param_from_pb
from serving.protocol.names import EXTENSIONS
from serving.rpc.interceptor import stream_infer

__all__ = ["GatewayServicer"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _metadata(context: Context) -> dict[str, str]:
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


class GatewayServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        router: Router,
        *,
        timeout: float,
        version: str,
        shadow: Shadow | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.router = router
        self.timeout = timeout
        self.version = version
        self.shadow = shadow

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self.timeout if remaining is None else max(0.0, min(self.timeout, remaining))

    async def _pick(self, model: str, context: Context) -> Upstream:
        framework = await self.router.choose(
            model, _metadata(context), wait_s=self._deadline(context)
        )
        return self.upstreams[framework]

    async def _infer(
        self, request: pb.ModelInferRequest, metadata: dict[str, str], timeout: float
    ) -> pb.ModelInferResponse:
        params = {
            key: param_from_pb(value)
            for key, value in request.parameters.items()
            if key == FRAMEWORK_PARAM
        }
        deadline = time.monotonic() + timeout
        # Finding where a model lives may take a look at the services (a miss): within the
        # call's deadline, which the call itself then gets the rest of.
        route = await self.router.route(
            request.model_name, metadata, params, request.id, wait_s=timeout
        )
        upstream = self.upstreams[route.framework]
        started = time.perf_counter()
        remaining = max(0.0, deadline - time.monotonic())
        response = await upstream.call(upstream.stub.ModelInfer, request, remaining)
        if route.shadow is not None and self.shadow is not None:
            latency_ms = (time.perf_counter() - started) * 1000.0
            self.shadow.mirror(request, response, route.framework, route.shadow, latency_ms)
        return response

    # ---- health ----

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        # Asked live (not from the watcher's cache) so a client sees the state of now.
        timeout = min(2.0, self._deadline(context))
        states = await asyncio.gather(*(u.probe(timeout) for u in self.upstreams.values()))
        return pb.ServerReadyResponse(ready=bool(states) and all(states))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="twinserve-gateway", version=self.version, extensions=EXTENSIONS
        )

    # ---- per-model calls, routed ----

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        upstream = await self._pick(request.name, context)
        return await upstream.call(upstream.stub.ModelReady, request, self._deadline(context))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        upstream = await self._pick(request.name, context)
        return await upstream.call(upstream.stub.ModelMetadata, request, self._deadline(context))

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        upstream = await self._pick(request.name, context)
        return await upstream.call(upstream.stub.ModelConfig, request, self._deadline(context))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """Every replica's statistics of the frameworks that served the model, summed (see
        `gateway.statistics`); a framework whose services all fail to answer is left out
        unless every framework fails."""
        metadata = _metadata(context)
        explicit = self.router.explicit(metadata)
        policy = self.router.policy(request.name)
        located = (
            await self.router.located(request.name, self._deadline(context))
            if explicit is None and policy is None and request.name
            else self.router.default
        )
        frameworks = statistics_frameworks(request.name, explicit, policy, located, self.upstreams)
        if not frameworks:  # none of the model's frameworks has a service here
            frameworks = [await self.router.choose(request.name, metadata)]  # raises why
        timeout = self._deadline(context)
        targets = [self.upstreams[self.router.check(f)] for f in frameworks]
        results = await asyncio.gather(
            *(u.call(u.stub.ModelStatistics, request, timeout) for u in targets),
            return_exceptions=True,
        )
        answers = [r for r in results if not isinstance(r, BaseException)]
        if not answers:
            raise next(r for r in results if isinstance(r, BaseException))
        return merge_statistics(answers)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self._infer(request, _metadata(context), self._deadline(context))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        metadata = _metadata(context)

        async def infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
            return await self._infer(request, metadata, self._deadline(context))

        async for response in stream_infer(request_iterator, infer):
            yield response

    # ---- repository: every backend unless the client names one ----

    def _targets(
        self, context: Context, params: Mapping[str, pb.ModelRepositoryParameter]
    ) -> list[Upstream]:
        named = params.get(FRAMEWORK_PARAM)
        chosen = self.router.explicit(
            _metadata(context),
            {FRAMEWORK_PARAM: named.string_param} if named is not None else None,
        )
        return [self.upstreams[chosen]] if chosen else list(self.upstreams.values())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        timeout = self._deadline(context)
        targets = self._targets(context, {})
        answers = await asyncio.gather(
            *(u.call(u.stub.RepositoryIndex, request, timeout) for u in targets)
        )
        return index_with_frameworks(zip((u.framework for u in targets), answers, strict=True))

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        await self._on_each(
            self._targets(context, request.parameters), "RepositoryModelLoad", request, context
        )
        await self._relocate(context)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self._on_each(
            self._targets(context, request.parameters), "RepositoryModelUnload", request, context
        )
        await self._relocate(context)
        return pb.RepositoryModelUnloadResponse()

    async def _relocate(self, context: Context) -> None:
        """After a load or unload through the gateway, where models live is looked at again
        before the answer, so the caller's next request is routed by the new state."""
        if self.router.locations is not None:
            await self.router.locations.renew(self._deadline(context))

    async def _on_each(
        self, targets: list[Upstream], method: str, request: Any, context: Context
    ) -> None:
        """Runs a repository call on each target; succeeds if any target succeeds (a model
        usually lives in one framework's repository), else raises the first error."""
        timeout = self._deadline(context)
        results = await asyncio.gather(
            *(u.call(getattr(u.stub, method), request, timeout) for u in targets),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]
