"""Routing policies per model: from settings, and from a JSON file re-read when it changes.

The file (`TWINSERVE_GATEWAY_ROUTING_FILE`) maps model names to one policy each:

    {
      "house_price": {"split": {"tensorflow": 90, "pytorch": 10}},
      "digits": {"framework": "pytorch"},
      "features": {"serve": "tensorflow", "shadow": "pytorch"}
    }

- `framework`: the model's default framework (as `TWINSERVE_GATEWAY_MODEL_FRAMEWORKS`).
- `split`: weights per framework (non-negative, not all zero). A request with an `id` goes
  where the hash of model and id falls, so one id always lands on one framework; a request
  without one is placed at random.
- `serve` and `shadow`: served by `serve`; the same request is mirrored to `shadow` in the
  background and the two answers compared (`gateway.shadow`).

Every framework named must be one the gateway is configured with (`GatewaySettings.urls`).
A model in the file replaces its entry from the settings; a model in neither goes to the
default framework. The file is checked every `routing_poll_s` seconds and re-read when its
modification time, size or inode changes; a file that does not parse or validate is logged
and the last good policy stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator

from gateway.settings import known_frameworks

__all__ = [
    "ModelPolicy",
    "PolicyError",
    "PolicyFile",
    "check_frameworks",
    "describe",
    "parse_policies",
]

logger = logging.getLogger(__name__)


class PolicyError(ValueError):
    """A routing file that cannot be read, parsed or validated."""


class ModelPolicy(BaseModel):
    """How one model's calls are routed when the client names no framework."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Framework names, checked against the configured ones by `check_frameworks`.
    framework: str | None = None
    split: dict[str, float] | None = None
    serve: str | None = None
    shadow: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ModelPolicy:
        kinds = [
            name
            for name, value in (
                ("framework", self.framework),
                ("split", self.split),
                ("serve", self.serve),
            )
            if value is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of 'framework', 'split' or 'serve' (with 'shadow'), "
                f"not {kinds or 'none'}"
            )
        if (self.serve is None) != (self.shadow is None):
            raise ValueError("'serve' and 'shadow' go together")
        if self.serve is not None and self.serve == self.shadow:
            raise ValueError(f"'shadow' must differ from 'serve' (both '{self.serve}')")
        if self.split is not None:
            if any(weight < 0 for weight in self.split.values()):
                raise ValueError("split weights must not be negative")
            if sum(self.split.values()) <= 0:
                raise ValueError("split weights must not all be zero")
        return self

    @property
    def frameworks(self) -> list[str]:
        """Every framework this policy names."""
        named = [self.framework, self.serve, self.shadow, *(self.split or {})]
        return [name for name in named if name is not None]

    @property
    def primary(self) -> str:
        """The framework of calls that are not split (metadata, readiness, training): the
        default, the served one, or the split's heaviest (the first on a tie)."""
        if self.split is not None:
            return max(_ordered(self.split), key=lambda pair: pair[1])[0]
        chosen = self.framework or self.serve
        assert chosen is not None  # the validator saw to it
        return chosen

    def pick(self, model: str, request_id: str = "") -> str:
        """The framework of one inference request."""
        if self.split is None:
            return self.primary
        weights = _ordered(self.split)
        point = _unit(model, request_id) * sum(weight for _, weight in weights)
        for framework, weight in weights:
            if point < weight:
                return framework
            point -= weight
        return next(framework for framework, weight in reversed(weights) if weight > 0)


def _ordered(split: Mapping[str, float]) -> list[tuple[str, float]]:
    # A fixed order (by name), so neither the file's key order nor the settings' order of
    # frameworks can move requests between frameworks.
    return sorted(split.items())


def _unit(model: str, request_id: str) -> float:
    """A point in [0, 1): fixed by model and request id, random without an id."""
    if not request_id:
        return random.random()
    digest = hashlib.blake2b(f"{model}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


_POLICIES = TypeAdapter(dict[str, ModelPolicy])


def parse_policies(
    text: str | bytes, frameworks: Collection[str] | None = None
) -> dict[str, ModelPolicy]:
    """The policies of a routing file's text, naming only `frameworks` (when given);
    PolicyError says what is wrong."""
    try:
        policies = _POLICIES.validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PolicyError(problems) from None
    if frameworks is not None:
        check_frameworks(policies, frameworks)
    return policies


def check_frameworks(policies: Mapping[str, ModelPolicy], frameworks: Collection[str]) -> None:
    """PolicyError naming the first policy that names a framework not in `frameworks`."""
    for model, policy in policies.items():
        for name in policy.frameworks:
            if name not in frameworks:
                raise PolicyError(
                    f"{model}: unknown framework '{name}' "
                    f"(configured: {known_frameworks(frameworks)})"
                )


def _signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class PolicyFile:
    """A routing file, loaded at start and re-read when it changes."""

    def __init__(self, path: Path, frameworks: Collection[str] | None = None) -> None:
        self.path = path
        self.frameworks = frameworks
        self._seen: tuple[int, int, int] | None = None

    def load(self) -> dict[str, ModelPolicy]:
        """Reads and parses the file (blocking); PolicyError if it is missing or bad."""
        try:
            self._seen = _signature(self.path)
            text = self.path.read_bytes()
        except OSError as exc:
            self._seen = None  # reported once; looked at again when it reappears
            raise PolicyError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return parse_policies(text, self.frameworks)

    def _changed(self) -> bool:
        try:
            return _signature(self.path) != self._seen
        except OSError:
            return self._seen is not None

    def _reload(self) -> dict[str, ModelPolicy] | None:
        """The new policies if the file changed since the last look (blocking)."""
        return self.load() if self._changed() else None

    async def watch(self, interval: float, apply: Callable[[dict[str, ModelPolicy]], None]) -> None:
        """Checks the file every `interval` seconds; applies a changed, valid file. A bad
        one is logged once per change and the last good policies stay."""
        while True:
            await asyncio.sleep(interval)
            try:
                policies = await asyncio.to_thread(self._reload)
            except PolicyError as exc:
                logger.error("routing file %s: %s (keeping the last good policy)", self.path, exc)
                continue
            if policies is not None:
                apply(policies)
                logger.info(
                    "routing file %s reloaded: %s", self.path, describe(policies) or "empty"
                )


def describe(policies: Mapping[str, ModelPolicy]) -> str:
    """One line for the log: each model and its policy."""
    return ", ".join(
        f"{model}={policy.model_dump_json(exclude_none=True)}" for model, policy in policies.items()
    )
