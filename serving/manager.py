"""Which model versions are loaded, and loading/unloading them from the repository."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from enum import StrEnum

from serving.backend import Backend, Model
from serving.errors import InvalidInput, ModelNotFound, ModelNotReady, ServingError, VersionNotFound
from serving.repository import ModelRepository, VersionMeta

__all__ = ["LoadedVersion", "ModelManager", "ModelState"]

logger = logging.getLogger(__name__)


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    name: str
    version: int
    meta: VersionMeta
    model: Model


@dataclass(slots=True)
class _Entry:
    state: ModelState
    versions: dict[int, LoadedVersion]
    reason: str = ""


class ModelManager:
    """Holds the loaded versions of every model. Reads are lock-free dict lookups; loads and
    unloads swap whole entries under a lock so a request sees one consistent model."""

    def __init__(self, repository: ModelRepository, backend: Backend, *, latest: int = 1) -> None:
        self.repository = repository
        self.backend = backend
        self.latest = latest
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # ---- lookups (request path) ----

    def get(self, name: str, version: str = "") -> LoadedVersion:
        if not name:
            raise InvalidInput("the request names no model (the model name is empty)")
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if entry.state is not ModelState.READY or not entry.versions:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' is {entry.state.lower()}{detail}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdecimal():
            raise VersionNotFound(
                f"model '{name}' has no version '{version}' (versions are positive integers)"
            )
        loaded = entry.versions.get(int(version))
        if loaded is None:
            available = ", ".join(str(v) for v in sorted(entry.versions))
            raise VersionNotFound(
                f"model '{name}' has no loaded version {version} (loaded: {available})"
            )
        return loaded

    def loaded_versions(self, name: str) -> list[int]:
        self.get(name)  # raises the right error for unknown or unavailable models
        return sorted(self._entries[name].versions)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def index(self) -> list[tuple[str, str, ModelState, str]]:
        """(name, version, state, reason) for every model on disk or loaded."""
        rows: list[tuple[str, str, ModelState, str]] = []
        names = set(self.repository.models()) | set(self._entries)
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None:
                rows.append((name, "", ModelState.UNAVAILABLE, "unloaded"))
            elif entry.versions:
                rows.extend(
                    (name, str(v), entry.state, entry.reason) for v in sorted(entry.versions)
                )
            else:
                rows.append((name, "", entry.state, entry.reason))
        return rows

    def ready_names(self) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.state is ModelState.READY)

    # ---- loading (control path, blocking: run off the event loop) ----

    def load(self, name: str) -> None:
        """(Re)loads the newest `latest` versions of `name`; the old ones keep serving until
        the new ones are ready, then are closed."""
        versions = self.repository.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' has no complete version in the repository")
        wanted = versions[-self.latest :]
        current = self._entries.get(name)
        keep = current.versions if current else {}
        fresh: dict[int, LoadedVersion] = {}
        for version in wanted:
            if version in keep:
                fresh[version] = keep[version]
                continue
            meta = self.repository.read_meta(name, version)
            path = self.repository.path(name, version)
            logger.info("loading %s version %d from %s", name, version, path)
            model = self.backend.load(path, meta.architecture)
            fresh[version] = LoadedVersion(name, version, meta, model)
        with self._lock:
            self._entries[name] = _Entry(ModelState.READY, fresh)
        for version, old in keep.items():
            if version not in fresh:
                old.model.close()

    def unload(self, name: str) -> None:
        # The model stays known, as UNAVAILABLE: requests for it then say it is unloaded
        # rather than unknown.
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                self._entries[name] = _Entry(ModelState.UNAVAILABLE, {}, "unloaded")
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        for loaded in entry.versions.values():
            loaded.model.close()
        logger.info("unloaded %s", name)

    def load_all(self) -> None:
        """Loads every model in the repository; a model that fails is marked UNAVAILABLE
        with the reason, and the others still load."""
        for name in self.repository.models():
            try:
                self.load(name)
            except Exception as exc:
                reason = exc.message if isinstance(exc, ServingError) else repr(exc)
                logger.exception("failed to load model %s", name)
                with self._lock:
                    self._entries[name] = _Entry(ModelState.UNAVAILABLE, {}, reason)

    async def aload(self, name: str) -> None:
        await asyncio.to_thread(self.load, name)

    def close(self) -> None:
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            for loaded in entry.versions.values():
                loaded.model.close()
