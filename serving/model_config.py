"""Per-model settings in `<repository>/<model>/config.json`: which versions to serve (Triton's
version policies) and which runtime answers by default.

    {"version_policy": {"latest": {"num_versions": 2}}, "runtime": "onnx"}
    {"version_policy": {"all": {}}}
    {"version_policy": {"specific": {"versions": [1, 3]}}}

A missing file means the service's defaults (latest N from settings, the native runtime).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from serving.errors import RepositoryError

__all__ = ["CONFIG_FILE", "ModelConfig", "VersionPolicy"]

CONFIG_FILE = "config.json"


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
class ModelConfig:
    policy: VersionPolicy | None = None  # None: the service's default (latest N)
    runtime: str = "native"

    @classmethod
    def read(cls, path: Path) -> ModelConfig:
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("the configuration must be a JSON object")
            unknown = sorted(set(raw) - {"version_policy", "runtime"})
            if unknown:
                raise ValueError(
                    f"unknown key(s) {', '.join(unknown)} (known: version_policy, runtime)"
                )
            return cls(
                policy=_policy(raw.get("version_policy")), runtime=str(raw.get("runtime", "native"))
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise RepositoryError(f"{path} is not a valid model configuration: {exc}") from exc


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
