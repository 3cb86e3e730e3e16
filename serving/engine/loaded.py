"""A loaded model version: its runtimes, and when it may be closed (`loading` makes one).

A version in use by a request is never closed under it: requests hold a reference while they
run, and a version retired by a swap or an unload is closed when the last one lets go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from serving.backend import Model
from serving.engine.batching import Batcher
from serving.engine.model_config import BatchingConfig, ModelConfig
from serving.engine.repository import VersionMeta
from serving.errors import InvalidInput, RuntimeUnavailable

__all__ = ["LoadedVersion"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedVersion:
    name: str
    version: int
    meta: VersionMeta
    models: dict[str, Model]  # runtime -> model
    default_runtime: str
    # Every runtime the service's backend registers (`Backend.runtimes`): the names a
    # request may ask for, whether this version offers them or not.
    registered: tuple[str, ...]
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
    # The configuration it was loaded by (auto-completed for a user's model file).
    config: ModelConfig = field(default_factory=ModelConfig)
    # A user's version: the model file it serves (Triton's layout); "" for ours.
    model_file: str = ""

    def runtime(self, asked: str | None) -> tuple[str, Model]:
        chosen = asked or self.default_runtime
        if chosen not in self.registered:
            raise InvalidInput(
                f"unknown runtime '{chosen}' (this service's runtimes: "
                f"{', '.join(self.registered)})"
            )
        model = self.models.get(chosen)
        if model is None:
            why = self.unavailable.get(chosen, f"{self.meta.framework} does not offer it")
            raise RuntimeUnavailable(
                f"version {self.version} of model '{self.name}' has no '{chosen}' runtime "
                f"({why}); available: {', '.join(self.models)}"
            )
        return chosen, model

    def platform(self, runtime: str | None = None) -> str:
        record = self.meta.runtimes.get(runtime or self.default_runtime)
        return self.meta.platform if record is None else record.platform

    def close(self) -> None:
        for model in self.models.values():
            model.close()
        logger.info("released %s version %d", self.name, self.version)
