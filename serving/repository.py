"""The model repository on disk: `<root>/<model>/<version>/` with a `model.json` per version.

A version directory is complete or absent: it is written under a hidden temporary name and
renamed into place, so a crash mid-write leaves no half version, and hidden or unreadable
directories found later are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.errors import InvalidInput, ModelNotFound, RepositoryError, VersionNotFound
from serving.model_config import CONFIG_FILE, ModelConfig
from serving.types import Signature, TensorSpec

__all__ = ["META_FILE", "ModelRepository", "VersionMeta"]

logger = logging.getLogger(__name__)

META_FILE = "model.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """What a version is: written once by training, read at every load."""

    framework: str
    platform: str
    architecture: str
    signature: Signature
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    created: str = ""
    # Runtime -> {"status": "ok" | "refused", "platform", "max_abs_diff", "reason"}: which
    # exports exist and how closely they matched the native model when they were made.
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def usable_runtimes(self) -> list[str]:
        """ "native" first, then every export that passed its parity check."""
        exported = [
            name
            for name, info in self.runtimes.items()
            if name != "native" and info.get("status") == "ok"
        ]
        return ["native", *sorted(exported)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VersionMeta:
        raw = json.loads(text)
        sig = raw["signature"]
        signature = Signature(
            inputs=tuple(_spec(s) for s in sig["inputs"]),
            outputs=tuple(_spec(s) for s in sig["outputs"]),
        )
        return cls(**{**raw, "signature": signature})


def _spec(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=raw["name"], datatype=raw["datatype"], shape=tuple(raw["shape"]))


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"invalid model name '{name}': use letters, digits, '_', '.', '-' "
            "(at most 128, not starting with a symbol)"
        )
    return name


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def models(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, model: str) -> list[int]:
        """Complete versions of `model`, oldest first."""
        directory = self.root / check_model_name(model)
        if not directory.is_dir():
            raise ModelNotFound(f"model '{model}' is not in the repository")
        found: list[int] = []
        for entry in directory.iterdir():
            if not entry.is_dir():
                continue
            if not entry.name.isdecimal() or int(entry.name) < 1:
                logger.warning("ignoring %s: not a version directory (half-written?)", entry)
                continue
            if not (entry / META_FILE).is_file():
                logger.warning("ignoring %s: no %s", entry, META_FILE)
                continue
            found.append(int(entry.name))
        return sorted(found)

    def path(self, model: str, version: int) -> Path:
        return self.root / check_model_name(model) / str(version)

    def read_config(self, model: str) -> ModelConfig:
        """The model's `config.json` (version policy, default runtime), or the defaults."""
        return ModelConfig.read(self.root / check_model_name(model) / CONFIG_FILE)

    def read_meta(self, model: str, version: int) -> VersionMeta:
        meta_path = self.path(model, version) / META_FILE
        if not meta_path.is_file():
            raise VersionNotFound(f"model '{model}' has no version {version}")
        try:
            return VersionMeta.from_json(meta_path.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{meta_path} is not valid version metadata: {exc}") from exc

    @contextmanager
    def new_version(self, model: str) -> Iterator[tuple[int, Path]]:
        """Yields (version, temporary directory); on clean exit the directory becomes
        `<model>/<version>` atomically, on error it is removed."""
        directory = self.root / check_model_name(model)
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        # Past every numbered directory, complete or not: renaming onto a half-written
        # version directory would fail after the work is done.
        taken = [int(p.name) for p in directory.iterdir() if p.name.isdecimal()]
        version = max(taken, default=0) + 1
        staging = directory / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            yield version, staging
            if not (staging / META_FILE).is_file():
                raise RepositoryError(f"new version of '{model}' was written without metadata")
            # rename() is atomic within one filesystem; a concurrent writer that took the
            # same number makes it fail rather than overwrite.
            os.rename(staging, directory / str(version))
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            # A new model whose first version failed leaves nothing behind (an empty
            # directory would show up as a model that cannot load).
            if created and not any(directory.iterdir()):
                directory.rmdir()

    @staticmethod
    def write_meta(directory: Path, meta: VersionMeta) -> None:
        stamped = meta if meta.created else _with_created(meta)
        (directory / META_FILE).write_text(stamped.to_json())


def _with_created(meta: VersionMeta) -> VersionMeta:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return VersionMeta(**{**asdict(meta), "signature": meta.signature, "created": now})
