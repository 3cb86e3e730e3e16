"""The gateway's ComparisonService: one request answered by several frameworks (and runtimes)
side by side with their differences, and the shadow traffic's statistics."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from gateway.difference import Output, decode_outputs, max_abs_diff
from gateway.routing import FRAMEWORK_PARAM, Router
from gateway.settings import FRAMEWORKS
from gateway.shadow import Histogram, Shadow, ShadowStats
from gateway.upstream import Upstream
from serving.codec import decode_inputs
from serving.dataplane import RUNTIME_PARAM
from serving.errors import InvalidInput
from serving.interceptor import status_of
from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc

__all__ = ["MAX_TARGETS", "ComparisonServicer"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# More targets than there are framework-runtime pairs is a mistake, not a comparison.
MAX_TARGETS = 8
# At most this much of the client's deadline is kept back for answering after the targets.
_ANSWER_RESERVE_S = 0.25


@dataclass
class _Result:
    framework: str
    runtime: str
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    latency_ms: float = 0.0
    version: str = ""
    outputs: list[Output] = field(default_factory=list)


def _parse(data: bytes) -> pb.ModelInferRequest:
    if not data:
        raise InvalidInput("infer_request is empty: send a serialized inference.ModelInferRequest")
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        raise InvalidInput(
            "infer_request is not a serialized inference.ModelInferRequest"
        ) from None
    if not request.model_name:
        raise InvalidInput("infer_request names no model (model_name is empty)")
    if FRAMEWORK_PARAM in request.parameters:
        raise InvalidInput(
            f"infer_request carries the '{FRAMEWORK_PARAM}' parameter; "
            "name the frameworks in targets instead"
        )
    # The same checks a service makes on the tensors, once, before any is called.
    decode_inputs(request)
    return request


def _targets(asked: Sequence[cpb.Target], available: Sequence[str]) -> list[tuple[str, str]]:
    if not asked:
        return [(framework, "") for framework in available]
    if len(asked) > MAX_TARGETS:
        raise InvalidInput(f"{len(asked)} targets: compare at most {MAX_TARGETS}")
    targets = [(target.framework, target.runtime) for target in asked]
    for framework, _ in targets:
        if not framework:
            raise InvalidInput("a target names no framework")
        if framework not in FRAMEWORKS:
            raise InvalidInput(f"unknown framework '{framework}' (use 'tensorflow' or 'pytorch')")
    duplicates = {t for t in targets if targets.count(t) > 1}
    if duplicates:
        framework, runtime = sorted(duplicates)[0]
        raise InvalidInput(f"target {framework}/{runtime or 'default'} is given twice")
    return targets


def _histogram(histogram: Histogram) -> cpb.Histogram:
    return cpb.Histogram(
        upper_bounds=histogram.upper_bounds,
        counts=histogram.counts,
        count=histogram.count,
        sum=histogram.sum,
    )


def _shadow_stats(stats: ShadowStats) -> cpb.ModelShadowStats:
    return cpb.ModelShadowStats(
        model_name=stats.model,
        serve=stats.serve,
        shadow=stats.shadow,
        served=stats.served,
        mirrored=stats.mirrored,
        dropped=stats.dropped,
        failed=stats.failed,
        in_flight=stats.in_flight,
        compared=stats.compared,
        incomparable=stats.incomparable,
        last_max_abs_diff=stats.last_max_abs_diff,
        worst_max_abs_diff=stats.worst_max_abs_diff,
        max_abs_diff=_histogram(stats.max_abs_diff),
        last_serve_latency_ms=stats.last_serve_latency_ms,
        last_shadow_latency_ms=stats.last_shadow_latency_ms,
        serve_latency_ms=_histogram(stats.serve_latency_ms),
        shadow_latency_ms=_histogram(stats.shadow_latency_ms),
    )


def _result_pb(result: _Result) -> cpb.TargetResult:
    message = cpb.TargetResult(
        target=cpb.Target(framework=result.framework, runtime=result.runtime),
        status=cpb.CallStatus(
            code=result.code.value[0], name=result.code.name, message=result.message
        ),
        latency_ms=result.latency_ms,
        model_version=result.version,
    )
    for output in result.outputs:
        message.outputs.add(
            name=output.name,
            datatype=output.datatype,
            shape=output.array.shape,
            values=output.array.astype(float).ravel().tolist() if output.numeric else (),
        )
    return message


def _answer(model: str, results: Sequence[_Result]) -> cpb.CompareResponse:
    return cpb.CompareResponse(
        model_name=model,
        results=[_result_pb(result) for result in results],
        differences=_differences(results),
    )


def _differences(results: Sequence[_Result]) -> list[cpb.Difference]:
    differences = []
    answered = [(i, r) for i, r in enumerate(results) if r.code is grpc.StatusCode.OK]
    for (i, first), (j, second) in itertools.combinations(answered, 2):
        theirs = {output.name: output for output in second.outputs}
        for output in first.outputs:
            other = theirs.get(output.name)
            gap, note = (
                max_abs_diff(output, other)
                if other is not None
                else (None, f"output only in result {i}")
            )
            differences.append(
                cpb.Difference(output=output.name, first=i, second=j, max_abs_diff=gap, note=note)
            )
    return differences


class ComparisonServicer(cpb_grpc.ComparisonServiceServicer):
    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        router: Router,
        shadow: Shadow,
        *,
        timeout: float,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.router = router
        self.shadow = shadow
        self.timeout = timeout

    def _deadline(self, context: Context) -> float:
        """The targets' deadline: the upstream bound, or less to leave time within the
        client's deadline to answer with every target's status (a slow one included)."""
        remaining = context.time_remaining()
        if remaining is None:
            return self.timeout
        reserve = min(_ANSWER_RESERVE_S, 0.2 * remaining)
        return max(0.0, min(self.timeout, remaining - reserve))

    async def _one(
        self, request: pb.ModelInferRequest, framework: str, runtime: str, timeout: float
    ) -> _Result:
        result = _Result(framework, runtime)
        forwarded = pb.ModelInferRequest()
        forwarded.CopyFrom(request)
        if runtime:
            forwarded.parameters[RUNTIME_PARAM].string_param = runtime
        started = time.perf_counter()
        try:
            upstream = self.upstreams[self.router.check(framework)]
            response = await upstream.call(upstream.stub.ModelInfer, forwarded, timeout)
            result.latency_ms = (time.perf_counter() - started) * 1000.0
            result.version = response.model_version
            result.runtime = response.parameters[RUNTIME_PARAM].string_param or runtime
            result.outputs = decode_outputs(response)
        except Exception as exc:
            result.latency_ms = (time.perf_counter() - started) * 1000.0
            result.code, result.message = status_of(exc, "Compare")
        return result

    async def Compare(self, request: cpb.CompareRequest, context: Context) -> cpb.CompareResponse:
        infer = _parse(request.infer_request)
        targets = _targets(request.targets, list(self.upstreams))
        timeout = self._deadline(context)
        results = await asyncio.gather(
            *(self._one(infer, framework, runtime, timeout) for framework, runtime in targets)
        )
        # Large outputs take time to widen and compare: off the event loop.
        return await asyncio.to_thread(_answer, infer.model_name, results)

    async def GetShadowStats(
        self, request: cpb.ShadowStatsRequest, context: Context
    ) -> cpb.ShadowStatsResponse:
        if request.model_name:
            chosen = [self.shadow.peek(request.model_name)]
        else:
            chosen = self.shadow.all_stats()
        return cpb.ShadowStatsResponse(models=[_shadow_stats(stats) for stats in chosen])
