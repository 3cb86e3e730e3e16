"""The gateway's ComparisonService: one request answered by several frameworks (and runtimes)
side by side with their differences, and the shadow traffic's statistics.

An answer holds every numeric output value of every target as a double, so it can be many
times the request (a float32 output answered by two targets is 4x its bytes). Its size is
estimated before any target runs (the model's output shapes from ModelMetadata, rows from the
request) and checked again, exactly, before it is built: past the message limit the call is
RESOURCE_EXHAUSTED, saying how many rows would fit. The values go into the answer as one
block of doubles, never as Python floats, and outputs are compared a chunk at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from gateway.difference import Output, decode_outputs, max_abs_diff
from gateway.routing import FRAMEWORK_PARAM, Router
from gateway.settings import known_frameworks
from gateway.shadow import Histogram, Shadow, ShadowStats
from gateway.upstream import Upstream
from serving.errors import InvalidInput, ResourceExhausted
from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.protocol.codec import check_inputs
from serving.protocol.names import RUNTIME_PARAM
from serving.rpc.interceptor import status_of

__all__ = ["MAX_TARGETS", "ComparisonServicer"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# More targets than there are framework-runtime pairs is a mistake, not a comparison.
MAX_TARGETS = 8
# At most this much of the client's deadline is kept back for answering after the targets.
_ANSWER_RESERVE_S = 0.25
# An answer's bytes: 8 per numeric output value (a packed double), and at most these for the
# rest of a target's result (status, version, latency) and of an output (name, shape, and
# its Difference).
_VALUE_BYTES = 8
_TARGET_BYTES = 1024
_OUTPUT_BYTES = 256
_VALUES_FIELD = cpb.OutputValues.DESCRIPTOR.fields_by_name["values"].number


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
    # The same checks a service makes on the tensors' datatypes, shapes and sizes, once,
    # before any is called; nothing is decoded (each service decodes its own copy).
    check_inputs(request)
    return request


def _rows(request: pb.ModelInferRequest) -> int | None:
    """The request's rows: its first input's first dimension (checked against its contents)."""
    shapes = [tensor.shape for tensor in request.inputs]
    return int(shapes[0][0]) if shapes and shapes[0] else None


def _values_per_target(metadata: pb.ModelMetadataResponse, rows: int | None) -> int | None:
    """Numeric output values the model answers for `rows` rows, from its output shapes; None
    when a shape has a variable dimension that is not the leading (row) one."""
    total = 0
    for output in metadata.outputs:
        if output.datatype == "BYTES":
            continue  # not sent back as values
        count = 1
        for position, dim in enumerate(output.shape):
            if dim >= 0:
                count *= dim
            elif position == 0 and rows is not None:
                count *= rows
            else:
                return None
        total += count
    return total


def _answer_bytes(values: int, targets: int, outputs: int) -> int:
    return values * _VALUE_BYTES + targets * _TARGET_BYTES + outputs * _OUTPUT_BYTES


def _targets(asked: Sequence[cpb.Target], available: Sequence[str]) -> list[tuple[str, str]]:
    if not asked:
        return [(framework, "") for framework in available]
    if len(asked) > MAX_TARGETS:
        raise InvalidInput(f"{len(asked)} targets: compare at most {MAX_TARGETS}")
    targets = [(target.framework, target.runtime) for target in asked]
    for framework, _ in targets:
        if not framework:
            raise InvalidInput("a target names no framework")
        if framework not in available:
            raise InvalidInput(
                f"unknown framework '{framework}' "
                f"(this gateway serves {known_frameworks(available)})"
            )
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


def _fill_result(message: cpb.TargetResult, result: _Result) -> None:
    message.target.framework = result.framework
    message.target.runtime = result.runtime
    message.status.code = result.code.value[0]
    message.status.name = result.code.name
    message.status.message = result.message
    message.latency_ms = result.latency_ms
    message.model_version = result.version
    for output in result.outputs:
        values = message.outputs.add(
            name=output.name, datatype=output.datatype, shape=output.array.shape
        )
        if output.numeric and output.array.size:
            # upb parses any buffer; the stubs say bytes, and bytes() would copy it.
            values.MergeFromString(cast(bytes, _packed_doubles(output.array)))


def _packed_doubles(array: np.ndarray) -> bytearray:
    """`OutputValues.values` in wire format (tag, length, little-endian doubles), written
    straight from the array: parsed in C, it costs 8 bytes a value, where a list of Python
    floats costs 32 more."""
    size = array.size * _VALUE_BYTES
    header = bytearray([_VALUES_FIELD << 3 | 2])  # wire type 2: length-delimited
    length = size
    while length >= 0x80:
        header.append(length & 0x7F | 0x80)
        length >>= 7
    header.append(length)
    buffer = bytearray(len(header) + size)
    buffer[: len(header)] = header
    np.frombuffer(buffer, dtype="<f8", offset=len(header))[:] = array.reshape(-1)
    return buffer


def _answer(model: str, results: Sequence[_Result]) -> cpb.CompareResponse:
    # Filled in place: a message built apart and then added would be copied.
    # Each target's outputs are let go once copied in (views into its response message).
    answer = cpb.CompareResponse(model_name=model, differences=_differences(results))
    for result in results:
        _fill_result(answer.results.add(), result)
        result.outputs = []
    return answer


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
        max_answer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.router = router
        self.shadow = shadow
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes

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
        forwarded = request
        if runtime:  # a copy of its own (the other targets' must not carry the runtime)
            forwarded = pb.ModelInferRequest()
            forwarded.CopyFrom(request)
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
        # A big request takes a while to parse and check: off the event loop.
        infer = await asyncio.to_thread(_parse, request.infer_request)
        targets = _targets(request.targets, list(self.upstreams))
        timeout = self._deadline(context)
        await self._estimate(infer, targets, timeout)
        results = await asyncio.gather(
            *(self._one(infer, framework, runtime, timeout) for framework, runtime in targets)
        )
        outputs = [output for result in results for output in result.outputs]
        values = sum(output.array.size for output in outputs if output.numeric)
        self._check_size(values, len(targets), len(outputs), _rows(infer), "holds")
        model = infer.model_name
        del infer, outputs  # the request's copy and the outputs' last other references
        # Large outputs take time to widen and compare: off the event loop.
        return await asyncio.to_thread(_answer, model, results)

    async def _estimate(
        self, request: pb.ModelInferRequest, targets: Sequence[tuple[str, str]], timeout: float
    ) -> None:
        """Refuses a Compare whose answer would pass the message limit before any target
        runs it, from each framework's output shapes. A framework whose metadata cannot be
        had, or whose shapes do not tell, is left out (its target fails on its own, or the
        answer's real size is checked before it is built)."""
        frameworks = sorted({framework for framework, _ in targets if framework in self.upstreams})
        asked = pb.ModelMetadataRequest(name=request.model_name, version=request.model_version)
        found = await asyncio.gather(*(self._metadata(f, asked, timeout) for f in frameworks))
        metadata = dict(zip(frameworks, found, strict=True))
        rows = _rows(request)
        values, outputs = 0, 0
        for framework, _ in targets:
            known = metadata.get(framework)
            count = None if known is None else _values_per_target(known, rows)
            if known is not None and count is not None:
                values += count
                outputs += len(known.outputs)
        self._check_size(values, len(targets), outputs, rows, "would hold")

    async def _metadata(
        self, framework: str, request: pb.ModelMetadataRequest, timeout: float
    ) -> pb.ModelMetadataResponse | None:
        upstream = self.upstreams[framework]
        try:
            return await upstream.call(upstream.stub.ModelMetadata, request, timeout)
        except Exception:  # the target's own call will say what is wrong
            return None

    def _check_size(
        self, values: int, targets: int, outputs: int, rows: int | None, verb: str
    ) -> None:
        size = _answer_bytes(values, targets, outputs)
        if size <= self.max_answer_bytes:
            return
        advice = "send fewer rows"
        if rows and values:
            room = self.max_answer_bytes - _answer_bytes(0, targets, outputs)
            per_row = _VALUE_BYTES * max(1, values // rows)
            advice = f"send at most {max(0, room // per_row)} rows (this request has {rows})"
        raise ResourceExhausted(
            f"the Compare answer {verb} {values} output values of {targets} targets, 8 bytes "
            f"each: about {size} bytes, over the gateway's message limit of "
            f"{self.max_answer_bytes} bytes; {advice} or name fewer targets"
        )

    async def GetShadowStats(
        self, request: cpb.ShadowStatsRequest, context: Context
    ) -> cpb.ShadowStatsResponse:
        if request.model_name:
            chosen = [self.shadow.peek(request.model_name)]
        else:
            chosen = self.shadow.all_stats()
        return cpb.ShadowStatsResponse(models=[_shadow_stats(stats) for stats in chosen])
