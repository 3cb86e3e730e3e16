"""A loaded model version: its runtimes, and when it may be closed.

A version in use by a request is never closed under it: requests hold a reference while they
run, and a version retired by a swap or an unload is closed when the last one lets go.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from serving.backend import Model
from serving.engine.batching import Batcher
from serving.engine.model_config import BatchingConfig
from serving.engine.repository import VersionMeta
from serving.errors import InvalidInput, RuntimeUnavailable

__all__ = ["RUNTIMES", "LoadedVersion", "warm_up"]

logger = logging.getLogger(__name__)

# Every runtime name the protocol parameter `runtime` may carry, across both frameworks.
RUNTIMES = ("native", "tflite", "torchscript", "onnx")


@dataclass(eq=False)
class LoadedVersion:
    name: str
    version: int
    meta: VersionMeta
    models: dict[str, Model]  # runtime -> model
    default_runtime: str
    # Runtime -> why it is not offered (refused export, failed load).
    unavailable: dict[str, str] = field(default_factory=dict)
    refs: int = 0  # guarded by the manager's lock
    retired: bool = False
    batching: BatchingConfig | None = None
    # Rows a request may have (Triton's max_batch_size, with or without batching); 0: any.
    max_batch_size: int = 0
    # Runtime -> its batcher, made by the data plane on first use (it needs the event loop).
    batchers: dict[str, Batcher] = field(default_factory=dict)
    # Runtime -> nanoseconds of a batch-1 call (the fastest of a few), measured by warm_up.
    call_ns: dict[str, int] = field(default_factory=dict)
    # Seconds loading and warming this version took (a metric).
    load_seconds: float = 0.0

    def runtime(self, asked: str | None) -> tuple[str, Model]:
        chosen = asked or self.default_runtime
        if chosen not in RUNTIMES:
            raise InvalidInput(f"unknown runtime '{chosen}' (runtimes: {', '.join(RUNTIMES)})")
        model = self.models.get(chosen)
        if model is None:
            why = self.unavailable.get(chosen, f"{self.meta.framework} does not offer it")
            raise RuntimeUnavailable(
                f"version {self.version} of model '{self.name}' has no '{chosen}' runtime "
                f"({why}); available: {', '.join(self.models)}"
            )
        return chosen, model

    def platform(self, runtime: str | None = None) -> str:
        chosen = runtime or self.default_runtime
        info = self.meta.runtimes.get(chosen, {})
        return str(info.get("platform", self.meta.platform))

    def close(self) -> None:
        for model in self.models.values():
            model.close()
        logger.info("released %s version %d", self.name, self.version)


_TIMED_CALLS = 10


def warm_up(loaded: LoadedVersion) -> None:
    """Batch-1 calls on every runtime before the version is offered, so the first request does
    not pay for lazy setup (graph tracing, allocator growth); the calls after the first are
    timed, which tells the data plane which runtimes are cheap enough to call inline."""
    spec = loaded.meta.signature.inputs[0]
    shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
    inputs = {spec.name: np.zeros(shape, dtype=np.float32)}
    for runtime, model in loaded.models.items():
        model.predict(inputs)
        timings = []
        for _ in range(_TIMED_CALLS):
            started = time.perf_counter_ns()
            model.predict(inputs)
            timings.append(time.perf_counter_ns() - started)
        # The fastest call is the model's own cost; slower ones measured a busy machine.
        loaded.call_ns[runtime] = min(timings)
        logger.debug(
            "warmed %s v%d on %s: %.0f us a call",
            loaded.name,
            loaded.version,
            runtime,
            loaded.call_ns[runtime] / 1000,
        )
