"""Per-model settings in `<repository>/<model>/config.json`: which versions to serve (Triton's
version policies) and which runtime answers by default.

    {"version_policy": {"latest": {"num_versions": 2}}, "runtime": "onnx"}
    {"version_policy": {"all": {}}}
    {"version_policy": {"specific": {"versions": [1, 3]}}}

`max_batch_size` > 0 bounds the rows of every request, as in Triton (a request with more is
INVALID_ARGUMENT before its contents are decoded); with `dynamic_batching` it is also the
largest batch. Dynamic batching, with Triton's names and meanings:

    {"max_batch_size": 32,
     "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [8, 16],
                          "default_queue_policy": {"max_queue_size": 256}}}

A missing file means the service's defaults (latest N from settings, the native runtime, no
batching). A model may instead have Triton's `config.pbtxt` (`triton_config`), read into this
same class; a model with both files is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serving.errors import RepositoryError
from serving.types import TensorSpec

__all__ = ["CONFIG_FILE", "BatchingConfig", "InstanceGroup", "ModelConfig", "VersionPolicy"]

CONFIG_FILE = "config.json"
_KEYS = ("version_policy", "runtime", "max_batch_size", "dynamic_batching")
# Triton's 0 means an unbounded queue; here a queue is always bounded (a burst past it is
# RESOURCE_EXHAUSTED, not memory growth), and this is the bound when none is configured.
DEFAULT_MAX_QUEUE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How a model's dynamic batcher forms batches. Sizes count rows (the first dimension of
    each input), as in Triton; `max_queue_size` counts requests."""

    max_batch_size: int
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of `available` (sorted oldest first)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.num_versions :]


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """Triton's `instance_group`: where the model runs (checked against the service's
    device; `count` is logged, not honoured: one instance serves each version here)."""

    kind: str = "KIND_AUTO"  # KIND_AUTO, KIND_GPU, KIND_CPU or KIND_MODEL
    count: int = 0
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    policy: VersionPolicy | None = None  # None: the service's default (latest N)
    runtime: str = "native"
    batching: BatchingConfig | None = None  # None: every request runs on its own
    max_batch_size: int = 0  # rows a request may have (Triton's); 0: no bound
    # Only from config.pbtxt: the file (for messages), what serves the model (checked
    # against the service), the declared tensors (None: not declared; with max_batch_size
    # > 0 their shapes leave out the batch dimension, Triton's meaning), where it runs and
    # the user's parameters (returned by the ModelConfig RPC).
    source: str = CONFIG_FILE
    platform: str = ""
    backend: str = ""
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    instance_groups: tuple[InstanceGroup, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    # Triton's default_model_filename: the file a user's version holds ("" for the
    # platform's default, serving.engine.layout).
    model_filename: str = ""
    # Triton's reshape: tensor name -> the shape the model takes or gives (batch left out
    # when max_batch_size > 0), where clients send and get the declared dims.
    reshapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # output name -> its label_filename (Triton's classification labels), in the model's
    # directory.
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("the configuration must be a JSON object")
            unknown = sorted(set(raw) - set(_KEYS))
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
            return cls.from_mapping(raw)
        except (ValueError, TypeError, AttributeError) as exc:
            raise RepositoryError(f"{path} is not a valid model configuration: {exc}") from exc

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """The settings both files share, from `config.json`'s shape; ValueError (or
        TypeError) saying which is wrong."""
        max_batch_size = _count(raw.get("max_batch_size", 0), "max_batch_size")
        return cls(
            policy=_policy(raw.get("version_policy")),
            runtime=str(raw.get("runtime", "native")),
            batching=_batching(max_batch_size, raw.get("dynamic_batching")),
            max_batch_size=max_batch_size,
        )


def _policy(raw: Any) -> VersionPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError("version_policy must have exactly one of latest, all, specific")
    ((kind, body),) = raw.items()
    body = body or {}
    if kind == "latest":
        count = int(body.get("num_versions", 1))
        if count < 1:
            raise ValueError("latest.num_versions must be at least 1")
        return VersionPolicy("latest", num_versions=count)
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = tuple(int(v) for v in body.get("versions", ()))
        if not versions or min(versions) < 1:
            raise ValueError("specific.versions must list positive version numbers")
        return VersionPolicy("specific", versions=versions)
    raise ValueError(f"unknown version policy '{kind}' (use latest, all or specific)")


def _count(raw: Any, what: str, *, minimum: int = 0) -> int:
    # bool is an int in Python; `true` as a size is a mistake, not 1.
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise ValueError(f"{what} must be an integer of at least {minimum}, got {raw!r}")
    return raw


def _batching(size: int, raw: Any) -> BatchingConfig | None:
    if raw is None:
        # Without a batcher, max_batch_size only bounds the rows of a request (as in Triton).
        return None
    if size == 0:
        raise ValueError("dynamic_batching needs max_batch_size of at least 1")
    if not isinstance(raw, dict):
        raise ValueError("dynamic_batching must be an object")
    known = {"max_queue_delay_microseconds", "preferred_batch_size", "default_queue_policy"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(
            f"unknown dynamic_batching key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    preferred = raw.get("preferred_batch_size", [])
    if not isinstance(preferred, list):
        raise ValueError("preferred_batch_size must be a list of sizes")
    sizes = tuple(sorted({_count(p, "a preferred_batch_size", minimum=1) for p in preferred}))
    if sizes and sizes[-1] > size:
        raise ValueError(f"preferred_batch_size {sizes[-1]} exceeds max_batch_size {size}")
    queue = raw.get("default_queue_policy", {})
    if not isinstance(queue, dict) or sorted(set(queue) - {"max_queue_size"}):
        raise ValueError("default_queue_policy supports only max_queue_size")
    max_queue = _count(queue.get("max_queue_size", 0), "max_queue_size")
    return BatchingConfig(
        max_batch_size=size,
        max_queue_delay_us=_count(
            raw.get("max_queue_delay_microseconds", 0), "max_queue_delay_microseconds"
        ),
        preferred_batch_sizes=sizes,
        max_queue_size=max_queue or DEFAULT_MAX_QUEUE_SIZE,
    )
