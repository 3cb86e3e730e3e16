"""Which model versions are loaded: loading them from the repository by each model's version
policy, swapping new versions in while old ones finish their requests, unloading, and
picking up what appears on disk (polling)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum

from serving.backend import Backend
from serving.engine.layout import ModelLayout, check_platform, model_layout
from serving.engine.loaded import LoadedVersion
from serving.engine.loading import load_version
from serving.engine.model_config import ModelConfig, VersionPolicy
from serving.engine.repository import (
    META_FILE,
    ModelRepository,
    check_model_name,
)
from serving.engine.triton_config import check_service
from serving.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    RepositoryError,
    ServingError,
    VersionNotFound,
    public_reason,
)

__all__ = ["LoadedVersion", "ModelManager", "ModelState"]

logger = logging.getLogger(__name__)


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class _Entry:
    state: ModelState
    versions: dict[int, LoadedVersion]
    reason: str = ""
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load
    # What the last load attempt saw on disk: polling retries only when it changes.
    seen: tuple[object, ...] = ()
    config: ModelConfig | None = None  # the configuration the versions were loaded by


def _reason(exc: BaseException) -> str:
    """The short reason clients see; the exception itself goes to the log."""
    return public_reason(exc, "an unexpected error (details are in the service's log)")


class _Skipped(RepositoryError):
    """A model of a platform another twinserve service serves: not this service's."""


def _failures(failed: dict[int, str]) -> str:
    return "; ".join(f"version {v} failed to load: {why}" for v, why in failed.items())


class ModelManager:
    """Holds the loaded versions of every model. Requests take a version with `use`, which
    keeps it open until they finish; loads build new versions off to the side and swap the
    model's entry in one step, so a request sees one consistent version."""

    def __init__(
        self,
        repository: ModelRepository,
        backend: Backend,
        *,
        latest: int = 1,
        runtime_threads: int = 0,
        default_max_batch_size: int = 0,
    ) -> None:
        self.repository = repository
        self.backend = backend
        self.latest = latest
        self.runtime_threads = runtime_threads
        self.default_max_batch_size = default_max_batch_size
        self._entries: dict[str, _Entry] = {}
        # Models another service serves (their platform): name -> (why, what was seen).
        self._skipped: dict[str, tuple[str, tuple[object, ...]]] = {}
        self._lock = threading.Lock()  # guards _entries and reference counts
        self._load_lock = threading.Lock()  # one load at a time
        self._unloaded: set[str] = set()  # unloaded on request: polling leaves them be
        self._closed = False

    # ---- lookups (request path) ----

    def get(self, name: str, version: str = "") -> LoadedVersion:
        if not name:
            raise InvalidInput("the request names no model (the model name is empty)")
        entry = self._entries.get(name)
        if entry is None:
            skipped = self._skipped.get(name)
            if skipped is not None:
                raise ModelNotFound(f"unknown model '{name}' here: {skipped[0]}")
            raise ModelNotFound(f"unknown model '{name}'")
        if entry.state is not ModelState.READY or not entry.versions:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' is {entry.state.lower()}{detail}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdecimal() or version != str(int(version)):
            raise VersionNotFound(
                f"model '{name}' has no version '{version}' "
                "(versions are positive integers, without leading zeros)"
            )
        loaded = entry.versions.get(int(version))
        if loaded is None:
            served = ", ".join(str(v) for v in sorted(entry.versions))
            failed = entry.failed.get(int(version))
            why = f" (it failed to load: {failed})" if failed else ""
            raise VersionNotFound(
                f"model '{name}' has no loaded version {version}{why}; serving: {served}"
            )
        return loaded

    @contextmanager
    def use(self, name: str, version: str = "") -> Iterator[LoadedVersion]:
        """The version a request runs on, kept open until the request is done."""
        with self._lock:
            loaded = self.get(name, version)
            loaded.refs += 1
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.refs -= 1
                close = loaded.retired and loaded.refs == 0
            if close:
                # The last request out closes a retired version; closing a framework model
                # can take a while, so not on the caller's (event loop) thread.
                threading.Thread(target=loaded.close, name="close-version").start()

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
        on_disk = set(self.repository.models()) - set(self._skipped)
        for name in sorted(on_disk | set(self._entries)):
            entry = self._entries.get(name)
            if entry is None:
                rows.append((name, "", ModelState.UNAVAILABLE, "unloaded"))
                continue
            versions = {v: (entry.state, entry.reason) for v in entry.versions}
            versions |= {
                v: (ModelState.UNAVAILABLE, f"failed to load: {why}")
                for v, why in entry.failed.items()
            }
            if not versions:
                rows.append((name, "", entry.state, entry.reason))
            rows.extend((name, str(v), s, why) for v, (s, why) in sorted(versions.items()))
        return rows

    def states(self) -> list[tuple[str, str, str, float | None]]:
        """(name, version, state, load seconds or None) of every model version this manager
        knows, loaded or failed, without touching the disk (metrics read it from another
        thread)."""
        with self._lock:
            entries = list(self._entries.items())
        rows: list[tuple[str, str, str, float | None]] = []
        for name, entry in sorted(entries):
            versions = dict(entry.versions)
            for version, loaded in sorted(versions.items()):
                rows.append((name, str(version), str(entry.state), loaded.load_seconds))
            for version in sorted(set(entry.failed) - set(versions)):
                rows.append((name, str(version), str(ModelState.UNAVAILABLE), None))
            if not versions and not entry.failed:
                rows.append((name, "", str(entry.state), None))
        return rows

    def ready_names(self) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.state is ModelState.READY)

    # ---- loading (blocking: run off the event loop) ----

    def policy(self, name: str) -> VersionPolicy:
        """The version policy `name` is served by (the configuration it was loaded with, not
        whatever its configuration file says now), or latest N."""
        return self._policy(self.config(name))

    def config(self, name: str) -> ModelConfig:
        """The configuration `name` was loaded with (defaults if none loaded yet)."""
        entry = self._entries.get(name)
        return (entry.config if entry is not None else None) or ModelConfig()

    def _policy(self, config: ModelConfig) -> VersionPolicy:
        return config.policy or VersionPolicy("latest", num_versions=self.latest)

    def load(self, name: str) -> None:
        """(Re)loads `name` by its version policy. New versions are loaded and warmed before
        they replace the old; old versions finish their requests before they are closed. If
        no wanted version loads, whatever served before keeps serving."""
        with self._load_lock:
            if self._closed:
                raise ModelNotReady("the service is shutting down")
            self._unloaded.discard(name)
            self._load(name)

    def _fingerprint(
        self, name: str, on_disk: list[int], config: ModelConfig
    ) -> tuple[object, ...]:
        """What polling compares: the versions, each version directory's modification time
        (files renamed in or removed change it, so a fixed version is retried), the config."""
        stamps = []
        for version in on_disk:
            try:
                stamps.append((version, self.repository.path(name, version).stat().st_mtime_ns))
            except OSError:
                stamps.append((version, 0))
        return (tuple(stamps), config)

    def _load(self, name: str) -> None:
        seen: tuple[object, ...] = ()
        try:
            config = self.repository.read_config(name)
            layout = model_layout(self.repository.root / name, config, self.backend)
            on_disk = self.repository.versions(name, layout.files)
            seen = self._fingerprint(name, on_disk, config)
            skip = check_platform(layout, self.backend, name) or self._trained_elsewhere(
                name, on_disk
            )
            if skip is not None:
                self._skip(name, skip, seen)
                raise _Skipped(skip)
            if config.runtime not in self.backend.runtimes:
                raise RepositoryError(
                    f"model '{name}' asks for unknown runtime '{config.runtime}' in its "
                    f"configuration ({self.backend.framework} runtimes: "
                    f"{', '.join(self.backend.runtimes)})"
                )
            check_service(config, self.backend)
            wanted = self._policy(config).select(on_disk)
            if not wanted:
                raise ModelNotFound(self._nothing_to_serve(name, on_disk, layout))
        except _Skipped:
            raise
        except ServingError as exc:
            self._unusable(name, _reason(exc), seen)
            raise
        self._skipped.pop(name, None)
        current = self._entries.get(name)
        keep = current.versions if current else {}
        fresh: dict[int, LoadedVersion] = {}
        failed: dict[int, str] = {}
        for version in wanted:
            old = keep.get(version)
            # Loaded by the same configuration (the version policy aside, which only picks
            # versions): nothing to reload.
            if old is not None and replace(old.config, policy=None) == replace(config, policy=None):
                fresh[version] = old
                continue
            try:
                fresh[version] = load_version(
                    self.repository,
                    self.backend,
                    name,
                    version,
                    config,
                    layout=layout,
                    threads=self.runtime_threads,
                    default_max_batch_size=self.default_max_batch_size,
                )
            except Exception as exc:
                logger.exception("%s version %d failed to load", name, version)
                failed[version] = _reason(exc)
        with self._lock:
            if not fresh:
                if current is None or not current.versions:
                    self._entries[name] = _Entry(
                        ModelState.UNAVAILABLE,
                        {},
                        _failures(failed),
                        failed,
                        seen,
                    )
                elif current is not None:
                    current.failed, current.seen = failed, seen
                raise RepositoryError(f"model '{name}' did not load: {_failures(failed)}")
            self._entries[name] = _Entry(ModelState.READY, fresh, "", failed, seen, config)
            retired = [old for v, old in keep.items() if fresh.get(v) is not old]
        self._retire(retired)

    def _trained_elsewhere(self, name: str, on_disk: list[int]) -> str | None:
        """Why this service skips `name` when its newest version is ours but was never made
        for what this backend runs natively (another framework's service trained it into a shared
        repository); None when it may serve it, or the metadata is unreadable (the load
        says why)."""
        if not on_disk or not (self.repository.path(name, on_disk[-1]) / META_FILE).is_file():
            return None
        try:
            meta = self.repository.read_meta(name, on_disk[-1])
        except ServingError:
            return None
        native = self.backend.runtimes["native"]
        # A refused export counts: loading it says why it is missing, which helps more.
        offered = {meta.platform} | {record.platform for record in meta.runtimes.values()}
        if native in offered:
            return None
        return (
            f"model '{name}' was trained by the {meta.framework} service ({meta.platform}); "
            f"this {self.backend.framework} service serves {native} versions"
        )

    def _nothing_to_serve(self, name: str, on_disk: list[int], layout: ModelLayout) -> str:
        if on_disk:
            return f"model '{name}' has no version its policy serves (on disk: {on_disk})"
        incomplete = self.repository.incomplete(name, layout.files)
        if incomplete:
            files = " or ".join(("model.json", *layout.files))
            listed = ", ".join(str(v) for v in incomplete)
            return f"model '{name}' has no complete version: {listed} hold(s) no {files}"
        return f"model '{name}' has no version directory (<model>/<version>/, e.g. {name}/1/)"

    def _skip(self, name: str, reason: str, seen: tuple[object, ...]) -> None:
        """Leaves a model another service serves to it: logged once, then out of the index
        (what this service served of it before is unloaded)."""
        with self._lock:
            previous = self._skipped.get(name)
            self._skipped[name] = (reason, seen)
            entry = self._entries.pop(name, None)
        if previous is None or previous[0] != reason:
            logger.info("skipping %s", reason)
        if entry is not None:
            self._retire(list(entry.versions.values()))

    def _unusable(self, name: str, reason: str, seen: tuple[object, ...]) -> None:
        """Records why a model in the repository cannot load (its configuration, no version
        to serve), so requests and the index say so and polling waits for a change. What
        served before keeps serving. Names not in the repository get no entry."""
        if name not in self.repository.models():
            return
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current.versions:
                current.seen = seen
            else:
                self._entries[name] = _Entry(ModelState.UNAVAILABLE, {}, reason, {}, seen)

    def _retire(self, versions: list[LoadedVersion]) -> None:
        """Closes each version now if no request holds it, else when the last one ends."""
        closing: list[LoadedVersion] = []
        with self._lock:
            for loaded in versions:
                loaded.retired = True
                if loaded.refs == 0:
                    closing.append(loaded)
        for loaded in closing:
            loaded.close()

    def unload(self, name: str) -> None:
        """The model stays known, as UNAVAILABLE, so requests say it is unloaded rather than
        unknown; polling leaves it unloaded until it is loaded again."""
        check_model_name(name)
        with self._load_lock:
            self._unloaded.add(name)
            with self._lock:
                entry = self._entries.get(name)
                if entry is None and name in self._skipped:
                    self._unloaded.discard(name)
                    raise ModelNotFound(f"unknown model '{name}' here: {self._skipped[name][0]}")
                if entry is None and name not in self.repository.models():
                    self._unloaded.discard(name)
                    raise ModelNotFound(f"unknown model '{name}'")
                self._entries[name] = _Entry(ModelState.UNAVAILABLE, {}, "unloaded")
            self._retire(list(entry.versions.values()) if entry else [])
        logger.info("unloaded %s", name)

    def load_all(self) -> None:
        """Loads every model in the repository; one that fails is marked UNAVAILABLE with
        the reason, and the others still load."""
        for name in self.repository.models():
            try:
                self.load(name)
            except _Skipped:
                pass  # logged once by _skip
            except Exception as exc:
                logger.error("model %s is unavailable: %s", name, _reason(exc))

    def refresh(self) -> None:
        """One polling pass: loads what changed on disk (new models, new versions, a new
        configuration), unloads models whose directory is gone."""
        with self._load_lock:
            if self._closed:
                return
            on_disk = set(self.repository.models())
            for name in sorted(on_disk - self._unloaded):
                entry = self._entries.get(name)
                seen: tuple[object, ...] = ()
                try:
                    config = self.repository.read_config(name)
                    layout = model_layout(self.repository.root / name, config, self.backend)
                    versions = self.repository.versions(name, layout.files)
                    seen = self._fingerprint(name, versions, config)
                except ServingError:
                    pass  # _load below reports it
                skipped = self._skipped.get(name)
                if (entry is not None and entry.seen == seen) or (
                    skipped is not None and skipped[1] == seen
                ):
                    continue
                try:
                    self._load(name)
                except _Skipped:
                    pass
                except Exception as exc:
                    logger.error("model %s did not load: %s", name, _reason(exc))
            for name in set(self._skipped) - on_disk:
                del self._skipped[name]
            for name in set(self._entries) - on_disk:
                with self._lock:
                    entry = self._entries.pop(name)
                self._retire(list(entry.versions.values()))
                logger.info("model %s left the repository: unloaded", name)

    async def aload(self, name: str) -> None:
        await asyncio.to_thread(self.load, name)

    async def poll(self, interval: float) -> None:
        """Runs `refresh` every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                logger.exception("repository poll failed")

    def close(self) -> None:
        # Taking the load lock waits out a load or polling pass still running in a thread.
        with self._load_lock:
            self._closed = True
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            self._retire(list(entry.versions.values()))
