"""The model repository on disk: `<root>/<model>/<version>/` with a `model.json` per version.

A version directory is complete or absent: it is written in a hidden staging directory,
fsynced, and renamed into place under the next free number (claimed at commit time, so
concurrent writers sharing a repository get distinct versions), so a crash or power cut
mid-write leaves no half version; hidden or unreadable directories found later are skipped
with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from serving.engine.model_config import CONFIG_FILE, ModelConfig
from serving.engine.triton_config import CONFIG_PBTXT, read_pbtxt
from serving.errors import InvalidInput, ModelNotFound, RepositoryError, VersionNotFound
from serving.types import Signature, TensorSpec

__all__ = [
    "META_FILE",
    "ModelRepository",
    "RuntimeRecord",
    "RuntimeStatus",
    "StagedVersion",
    "VersionMeta",
]

logger = logging.getLogger(__name__)

META_FILE = "model.json"
_STAGING = ".staging"  # under the root: versions being written (hidden: never a model name)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RuntimeStatus(StrEnum):
    OK = "ok"  # native, or an export that matched it: served
    REFUSED = "refused"  # an export that failed or disagreed: removed, never served


@dataclass(frozen=True, slots=True)
class RuntimeRecord:
    """One runtime of a stored version, as `model.json` records it. `tolerance` and
    `max_abs_diff` are an export's parity check (None for native, and `max_abs_diff` for an
    export that never answered); `reason` says why one was refused."""

    platform: str
    status: RuntimeStatus = RuntimeStatus.OK
    tolerance: float | None = None
    max_abs_diff: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON object, without the fields that do not apply (the file format predates
        this class: the same keys, absent rather than null)."""
        raw: dict[str, Any] = {"platform": self.platform, "status": str(self.status)}
        for key in ("tolerance", "max_abs_diff"):
            if getattr(self, key) is not None:
                raw[key] = getattr(self, key)
        if self.reason:
            raw["reason"] = self.reason
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RuntimeRecord:
        def number(key: str) -> float | None:
            return None if raw.get(key) is None else float(raw[key])

        return cls(
            platform=str(raw["platform"]),
            status=RuntimeStatus(raw["status"]),
            tolerance=number("tolerance"),
            max_abs_diff=number("max_abs_diff"),
            reason=str(raw.get("reason", "")),
        )


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
    # Runtime -> its record: which exports exist and how closely they matched the native
    # model when they were made.
    runtimes: dict[str, RuntimeRecord] = field(default_factory=dict)

    def usable_runtimes(self) -> list[str]:
        """ "native" first, then every export that passed its parity check."""
        exported = [
            name
            for name, record in self.runtimes.items()
            if name != "native" and record.status is RuntimeStatus.OK
        ]
        return ["native", *sorted(exported)]

    def to_json(self) -> str:
        raw = asdict(self)
        raw["runtimes"] = {name: record.to_json() for name, record in self.runtimes.items()}
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VersionMeta:
        raw = json.loads(text)
        sig = raw["signature"]
        signature = Signature(
            inputs=tuple(_spec(s) for s in sig["inputs"]),
            outputs=tuple(_spec(s) for s in sig["outputs"]),
        )
        runtimes = {
            str(name): RuntimeRecord.from_json(record)
            for name, record in raw.get("runtimes", {}).items()
        }
        return cls(**{**raw, "signature": signature, "runtimes": runtimes})


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

    def versions(self, model: str, files: tuple[str, ...] = ()) -> list[int]:
        """Complete versions of `model`, oldest first: numbered directories holding our
        `model.json`, or one of `files` (a user's model file in Triton's layout,
        `serving.engine.layout`). A directory with neither is being written, or lacks its
        file: skipped (`incomplete` lists them)."""
        return sorted(int(entry.name) for entry in self._numbered(model) if _complete(entry, files))

    def incomplete(self, model: str, files: tuple[str, ...] = ()) -> list[int]:
        """The numbered directories of `model` that `versions` skips."""
        return sorted(
            int(entry.name) for entry in self._numbered(model) if not _complete(entry, files)
        )

    def _numbered(self, model: str) -> list[Path]:
        directory = self.root / check_model_name(model)
        if not directory.is_dir():
            raise ModelNotFound(f"model '{model}' is not in the repository")
        found: list[Path] = []
        for entry in directory.iterdir():
            if not entry.is_dir():
                continue
            if not entry.name.isdecimal() or int(entry.name) < 1:
                logger.warning("ignoring %s: not a version directory (half-written?)", entry)
                continue
            found.append(entry)
        return found

    def path(self, model: str, version: int) -> Path:
        return self.root / check_model_name(model) / str(version)

    def read_config(self, model: str) -> ModelConfig:
        """The model's `config.json` or Triton's `config.pbtxt` (version policy, default
        runtime, batching...), or the defaults. One layout per model: both is an error, not
        a precedence to guess at."""
        directory = self.root / check_model_name(model)
        if (directory / CONFIG_PBTXT).is_file():
            if (directory / CONFIG_FILE).is_file():
                raise RepositoryError(
                    f"model '{model}' has both {CONFIG_FILE} and {CONFIG_PBTXT}: "
                    "keep one (they hold the same settings)"
                )
            return read_pbtxt(directory / CONFIG_PBTXT, model)
        return ModelConfig.read(directory / CONFIG_FILE)

    def read_meta(self, model: str, version: int) -> VersionMeta:
        meta_path = self.path(model, version) / META_FILE
        if not meta_path.is_file():
            raise VersionNotFound(f"model '{model}' has no version {version}")
        try:
            return VersionMeta.from_json(meta_path.read_text())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # What the parser said is in the log (the chained cause); clients get the gist.
            raise RepositoryError(
                f"{META_FILE} of version {version} is not valid version metadata"
            ) from exc

    @contextmanager
    def new_version(self, model: str) -> Iterator[StagedVersion]:
        """Yields a staging directory to write a new version of `model` into. On clean exit
        the directory is made durable and becomes `<model>/<N>` with the next free number,
        picked now rather than at the start (a concurrent writer may have committed
        meanwhile), and `version` says which; on error it is removed.

        Staging directories live in `<root>/.staging/`, outside every model's directory, so
        a writer killed mid-write leaves nothing a reader of the model could trip on (nor a
        model directory with no version in it)."""
        directory = self.root / check_model_name(model)
        staging_root = self.root / _STAGING
        staging_root.mkdir(exist_ok=True)
        staged = StagedVersion(staging_root / f"{model}-{uuid.uuid4().hex}")
        staged.path.mkdir()
        try:
            yield staged
            if not (staged.path / META_FILE).is_file():
                raise RepositoryError(f"new version of '{model}' was written without metadata")
            _sync_tree(staged.path)
            created = not directory.exists()
            directory.mkdir(exist_ok=True)
            staged.version = _claim(staged.path, directory)
            _fsync_dir(directory)
            if created:
                _fsync_dir(self.root)
        finally:
            if staged.path.exists():
                shutil.rmtree(staged.path, ignore_errors=True)

    @staticmethod
    def write_meta(directory: Path, meta: VersionMeta) -> None:
        stamped = meta if meta.created else _with_created(meta)
        (directory / META_FILE).write_text(stamped.to_json())


def _complete(version_dir: Path, files: tuple[str, ...]) -> bool:
    return (version_dir / META_FILE).is_file() or any((version_dir / f).exists() for f in files)


def _with_created(meta: VersionMeta) -> VersionMeta:
    return replace(meta, created=datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(slots=True)
class StagedVersion:
    """A version being written: `path` while it is staged, `version` once committed."""

    path: Path
    version: int = 0


# Attempts at claiming a number before giving up: each failure means another writer
# committed that number in between, so this many means something else is wrong.
_CLAIM_ATTEMPTS = 100


def _claim(staging: Path, directory: Path) -> int:
    """Renames `staging` to the next free version number of `directory` and returns it.

    mkdir is the claim: it fails if the number exists, whereas rename(2) would silently
    replace an empty directory. The rename then replaces the empty claimed directory
    atomically. A collision (another writer claimed the number first) moves on to the
    next number."""
    for _ in range(_CLAIM_ATTEMPTS):
        # Past every numbered directory, complete or not: a half-written one is someone's.
        taken = [int(p.name) for p in directory.iterdir() if p.name.isdecimal()]
        version = max(taken, default=0) + 1
        target = directory / str(version)
        try:
            target.mkdir()
        except FileExistsError:
            continue
        try:
            os.rename(staging, target)
        except OSError as exc:
            # A writer that renames without claiming replaced our empty claim first.
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            with suppress(OSError):
                target.rmdir()
            raise
        return version
    raise RepositoryError(
        f"could not claim a version number in {directory} after {_CLAIM_ATTEMPTS} attempts"
    )


def _sync_tree(root: Path) -> None:
    """Flushes every file under `root`, then every directory bottom-up, then `root`: after a
    power cut the renamed version then holds what was written, not empty files."""
    for current, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(current, name)
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            if not Path(current, name).is_symlink():
                _fsync_dir(Path(current, name))
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    # A directory's fsync makes its entries (a rename, a new file) durable.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
