"""The protocol-neutral data plane: checks requests against a model's signature, decodes them,
runs them on the backend off the event loop, and encodes the answer.

The order matters: a request's headers (names, datatypes, shapes, rows) are checked before its
contents are decoded, so a wrong request costs no more than reading its headers; big contents
are decoded (and big answers encoded) on a thread, not on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from serving.backend import Model
from serving.engine.batching import Batcher
from serving.engine.ledger import Ledger
from serving.engine.manager import LoadedVersion, ModelManager
from serving.engine.metrics import InferenceMetrics
from serving.engine.statistics import StatisticsBook
from serving.engine.timings import Timings
from serving.errors import InvalidInput, ServingError, code_of
from serving.protocol.names import FRAMEWORK_PARAM, RUNTIME_PARAM
from serving.types import EncodedInput, InferRequest, InferResponse, Signature

__all__ = ["OFFLOAD_ELEMENTS", "DataPlane"]

# Decoding or encoding more elements than this (typed contents, BYTES: handled one at a time)
# runs on a thread: 2**16 elements take milliseconds, far more than the hop (~0.1-0.2 ms), and
# would stall every other call on the event loop. Below it, the hop costs more than it saves.
OFFLOAD_ELEMENTS = 2**16

T = TypeVar("T")


def _describe(signature: Signature) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in signature.inputs)


def validate_inputs(
    model: str, signature: Signature, inputs: Sequence[EncodedInput], max_rows: int | None
) -> int:
    """Checks inputs' headers against the model (nothing is decoded yet); returns the rows."""
    if not inputs:
        raise InvalidInput(
            f"the request has no inputs; model '{model}' expects: {_describe(signature)}"
        )
    given = {tensor.name: tensor for tensor in inputs}
    for name in given:
        if signature.input(name) is None:
            raise InvalidInput(
                f"model '{model}' has no input '{name}'; it expects: {_describe(signature)}"
            )
    for spec in signature.inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidInput(
                f"missing input '{spec.name}' for model '{model}'; it expects: "
                f"{_describe(signature)}"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{spec.name}' of model '{model}' must be {spec.datatype}, "
                f"got {tensor.datatype}"
            )
        if not spec.accepts_shape(tensor.shape):
            raise InvalidInput(
                f"input '{spec.name}' of model '{model}' has shape {list(tensor.shape)}, "
                f"expected {list(spec.shape)} (-1 is any size)"
            )
        if 0 in tensor.shape:
            # An empty batch has nothing to infer, and backends fail on it in their own ways
            # (an INTERNAL before this check; found by tests/integration/test_fuzz.py).
            raise InvalidInput(
                f"input '{spec.name}' of model '{model}' has no elements "
                f"(shape {list(tensor.shape)})"
            )
    first = signature.inputs[0].name
    rows = given[first].shape[0] if given[first].shape else 1  # a scalar is one row
    if max_rows is not None:
        # With max_batch_size the first dimension is the batch, one size for every input
        # (Triton: "batch size does not match other inputs"); batched, rows would mix.
        for spec in signature.inputs[1:]:
            if given[spec.name].shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}' of model '{model}' has {given[spec.name].shape[0]} "
                    f"rows and input '{first}' has {rows}: every input needs the same number "
                    "of rows (the first dimension is the batch)"
                )
    if max_rows is not None and rows > max_rows:
        # Triton's max_batch_size: refused before the contents are decoded.
        raise InvalidInput(
            f"the request has {rows} rows; model '{model}' takes at most {max_rows} per "
            f"request (max_batch_size): send at most {max_rows} rows a request"
        )
    return rows


def _decode_all(inputs: Sequence[EncodedInput]) -> dict[str, np.ndarray]:
    return {tensor.name: tensor.decode() for tensor in inputs}


def _select_outputs(
    loaded: LoadedVersion, request: InferRequest
) -> tuple[list[str], dict[str, bool]]:
    signature = loaded.meta.signature
    if not request.outputs:
        names = [spec.name for spec in signature.outputs]
        return names, dict.fromkeys(names, request.binary_output)
    binary: dict[str, bool] = {}
    for wanted in request.outputs:
        if signature.output(wanted.name) is None:
            declared = ", ".join(spec.name for spec in signature.outputs)
            raise InvalidInput(
                f"model '{loaded.name}' has no output '{wanted.name}' (outputs: {declared})"
            )
        binary[wanted.name] = wanted.binary
    return list(binary), binary


class DataPlane:
    """Runs requests on their model version: on their own, or through the version's dynamic
    batcher when its configuration asks for batching.

    Framework calls run on a thread pool, except calls that warm-up measured under
    `inline_max_us` with at most `inline_max_rows` rows: those run on the event loop, because
    the hop to a thread and back (two wake-ups, ~100-200 us on a small VM) costs more than the
    call blocks the loop."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        threads: int,
        framework: str,
        inline_max_us: int = 0,
        inline_max_rows: int = 8,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.framework = framework
        self.stats = StatisticsBook()
        self.metrics = metrics or InferenceMetrics(
            CollectorRegistry(), framework=framework, device="cpu"
        )
        self.ledger = Ledger(self.stats, self.metrics)
        self._threads = threads
        self._inline_max_ns = inline_max_us * 1000
        self._inline_max_rows = inline_max_rows
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")

    async def infer(self, request: InferRequest, encode: Callable[[InferResponse], T]) -> T:
        """Runs `request` and returns its answer as `encode` makes it (timed as the request's
        compute_output, as decoding is its compute_input). Its outcome is written to the
        version's ledger once: succeeded or failed."""
        started = time.perf_counter_ns()
        asked = request.parameters.get(RUNTIME_PARAM)
        if asked is not None and not isinstance(asked, str):
            raise InvalidInput(f"parameter '{RUNTIME_PARAM}' must be a string")
        # The version stays open until this request is done, even if a swap retires it.
        with self.manager.use(request.model_name, request.model_version) as loaded:
            ledger = self.ledger.version(loaded.name, loaded.version)
            ledger.in_flight.inc()
            runtime = "unknown"  # until the asked runtime is known to exist
            try:
                runtime, model = loaded.runtime(asked)
                answer, timings = await self._run(loaded, runtime, model, request, encode)
            except BaseException as exc:
                ledger.failed(runtime, code_of(exc), time.perf_counter_ns() - started)
                raise
            finally:
                ledger.in_flight.dec()
        timings.total_ns = time.perf_counter_ns() - started
        ledger.succeeded(runtime, timings)
        return answer

    async def _run(
        self,
        loaded: LoadedVersion,
        runtime: str,
        model: Model,
        request: InferRequest,
        encode: Callable[[InferResponse], T],
    ) -> tuple[T, Timings]:
        """Checks, decodes, computes (alone or in a batch) and encodes; the answer and its
        timings (all but the total)."""
        rows = validate_inputs(
            loaded.name, loaded.meta.signature, request.inputs, loaded.max_batch_size or None
        )
        names, binary = _select_outputs(loaded, request)
        input_start = time.perf_counter_ns()
        arrays = await self._decode(request.inputs)
        compute_start = time.perf_counter_ns()
        if loaded.batching is None:
            outputs = await self._call(loaded, runtime, model, arrays, rows)
            timings = Timings(
                rows=rows,
                queue_ns=0,
                input_ns=compute_start - input_start,
                compute_ns=time.perf_counter_ns() - compute_start,
                output_ns=0,
                batch_rows=rows,
                own_execution=True,
            )
        else:
            result = await self._batcher(loaded, runtime, model).submit(arrays)
            outputs = result.outputs
            # The batcher counted the batch's call; the request adds its decoding and
            # encoding to it.
            timings = Timings(
                rows=rows,
                queue_ns=result.queue_ns,
                input_ns=compute_start - input_start,
                compute_ns=result.compute_ns,
                output_ns=0,
                batch_rows=result.batch_rows,
                own_execution=False,
            )
            del result  # holds the outputs too: they go with `outputs`, below
        del arrays  # the inputs' memory goes before the answer's is made
        response = self._response(loaded, runtime, request, outputs, names=names, binary=binary)
        del outputs
        output_start = time.perf_counter_ns()
        answer = await self._encode(encode, response)
        timings.output_ns = time.perf_counter_ns() - output_start
        return answer, timings

    def _response(
        self,
        loaded: LoadedVersion,
        runtime: str,
        request: InferRequest,
        outputs: dict[str, np.ndarray],
        *,
        names: list[str],
        binary: dict[str, bool],
    ) -> InferResponse:
        missing = [n for n in names if n not in outputs]
        if missing:
            raise ServingError(f"model '{loaded.name}' did not produce outputs {missing}")
        datatypes = {s.name: s.datatype for s in loaded.meta.signature.outputs}
        return InferResponse(
            model_name=loaded.name,
            model_version=str(loaded.version),
            id=request.id,
            outputs={name: outputs[name] for name in names},
            datatypes={name: datatypes[name] for name in names},
            binary=binary,
            parameters={FRAMEWORK_PARAM: self.framework, RUNTIME_PARAM: runtime},
        )

    async def _decode(self, inputs: Sequence[EncodedInput]) -> dict[str, np.ndarray]:
        if sum(tensor.work for tensor in inputs) <= OFFLOAD_ELEMENTS:
            return _decode_all(inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _decode_all, inputs)

    async def _encode(self, encode: Callable[[InferResponse], T], response: InferResponse) -> T:
        if sum(array.size for array in response.outputs.values()) <= OFFLOAD_ELEMENTS:
            return encode(response)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, encode, response)

    async def _call(
        self,
        loaded: LoadedVersion,
        runtime: str,
        model: Model,
        arrays: dict[str, np.ndarray],
        rows: int,
    ) -> dict[str, np.ndarray]:
        cost = loaded.call_ns.get(runtime)
        if cost is not None and cost <= self._inline_max_ns and rows <= self._inline_max_rows:
            return model.predict(arrays)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, model.predict, arrays)

    def _batcher(self, loaded: LoadedVersion, runtime: str, model: Model) -> Batcher:
        batcher = loaded.batchers.get(runtime)
        if batcher is None:
            assert loaded.batching is not None

            async def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return await self._call(
                    loaded, runtime, model, arrays, len(next(iter(arrays.values())))
                )

            ledger = self.ledger.version(loaded.name, loaded.version)

            def on_batch(rows: int, compute_ns: int) -> None:
                ledger.batch_ran(runtime, rows, compute_ns)

            # One batch in flight per inference thread: while they are all busy, the queue
            # fills, and that is what makes batches under load.
            batcher = Batcher(loaded.batching, run, instances=self._threads, on_batch=on_batch)
            loaded.batchers[runtime] = batcher
        return batcher

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
