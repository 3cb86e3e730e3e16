"""The protocol-neutral data plane: validates requests against a model's signature and runs
them on the backend, off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.errors import InvalidInput, ServingError
from serving.manager import LoadedVersion, ModelManager
from serving.statistics import StatisticsBook
from serving.types import InferRequest, InferResponse, InputTensor, Signature

__all__ = ["RUNTIME_PARAM", "DataPlane"]

# The request parameter that picks a runtime, echoed in the response (as `framework` is).
RUNTIME_PARAM = "runtime"


def _describe(signature: Signature) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in signature.inputs)


def validate_inputs(
    model: str, signature: Signature, inputs: list[InputTensor]
) -> dict[str, np.ndarray]:
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
    arrays: dict[str, np.ndarray] = {}
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
        if not spec.accepts_shape(tensor.data.shape):
            raise InvalidInput(
                f"input '{spec.name}' of model '{model}' has shape {list(tensor.data.shape)}, "
                f"expected {list(spec.shape)} (-1 is any size)"
            )
        if tensor.data.size == 0:
            # An empty batch has nothing to infer, and backends fail on it in their own ways
            # (an INTERNAL before this check; found by tests/integration/test_fuzz.py).
            raise InvalidInput(
                f"input '{spec.name}' of model '{model}' has no elements "
                f"(shape {list(tensor.data.shape)})"
            )
        arrays[spec.name] = tensor.data
    return arrays


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
    def __init__(self, manager: ModelManager, *, threads: int, framework: str) -> None:
        self.manager = manager
        self.framework = framework
        self.stats = StatisticsBook()
        # Framework calls block; they run here, never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter_ns()
        asked = request.parameters.get(RUNTIME_PARAM)
        if asked is not None and not isinstance(asked, str):
            raise InvalidInput(f"parameter '{RUNTIME_PARAM}' must be a string")
        # The version stays open until this request is done, even if a swap retires it.
        with self.manager.use(request.model_name, request.model_version) as loaded:
            try:
                runtime, model = loaded.runtime(asked)
                arrays = validate_inputs(loaded.name, loaded.meta.signature, request.inputs)
                names, binary = _select_outputs(loaded, request)
                loop = asyncio.get_running_loop()
                compute_start = time.perf_counter_ns()
                outputs = await loop.run_in_executor(self._executor, model.predict, arrays)
                compute_ns = time.perf_counter_ns() - compute_start
                missing = [n for n in names if n not in outputs]
                if missing:
                    raise ServingError(f"model '{loaded.name}' did not produce outputs {missing}")
            except BaseException:
                self.stats.record_failure(
                    loaded.name, loaded.version, time.perf_counter_ns() - started
                )
                raise
        batch = next(iter(arrays.values())).shape[0] if arrays else 1
        self.stats.record_success(
            loaded.name, loaded.version, batch, time.perf_counter_ns() - started, compute_ns
        )
        datatypes = {s.name: s.datatype for s in loaded.meta.signature.outputs}
        return InferResponse(
            model_name=loaded.name,
            model_version=str(loaded.version),
            id=request.id,
            outputs={name: outputs[name] for name in names},
            datatypes={name: datatypes[name] for name in names},
            binary=binary,
            parameters={"framework": self.framework, RUNTIME_PARAM: runtime},
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
