"""Loading one stored version: every runtime its service's backend registers, a warm-up
call on each, and the short reason clients read when that fails (the exception itself goes
to the log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from serving.backend import Backend, Model
from serving.engine.layout import ModelLayout
from serving.engine.loaded import LoadedVersion
from serving.engine.model_config import ModelConfig
from serving.engine.repository import META_FILE, ModelRepository, RuntimeStatus, VersionMeta
from serving.engine.runtimes import load_runtime
from serving.engine.triton_config import check_signature
from serving.engine.user_models import load_user_model, resolve_user_version
from serving.errors import RepositoryError, ServingError
from serving.protocol.codec import zeros

__all__ = ["load_version", "warm_up", "warm_up_inputs"]

logger = logging.getLogger(__name__)

# What a client reads when a version fails with an exception that is not ours, by the step
# it failed in (the exception and its traceback are logged).
_READING = "the model files could not be read"
_WARMING = "the model failed its warm-up call"


def load_version(
    repository: ModelRepository,
    backend: Backend,
    name: str,
    version: int,
    config: ModelConfig,
    *,
    layout: ModelLayout,
    threads: int = 0,
    default_max_batch_size: int = 0,
) -> LoadedVersion:
    """Loads the stored version, ours (every runtime of it that `backend` registers) or a
    user's model file (`serving.engine.user_models`), warms each runtime up and returns the
    version ready to serve; closes what it loaded if a step fails. An exception that is not
    a ServingError becomes RepositoryError with a short reason, the step that failed; the
    exception is its cause, for the log."""
    started = time.perf_counter()
    declared = config
    models: dict[str, Model] = {}
    step = _READING
    path = repository.path(name, version)
    user = not (path / META_FILE).is_file()
    try:
        if user:
            resolved = resolve_user_version(
                backend, path, layout, config, default_max_batch_size=default_max_batch_size
            )
            meta, config = resolved.meta, resolved.config
            models[resolved.runtime] = load_user_model(backend, resolved, threads=threads)
            default, unavailable = resolved.runtime, _not_exported(backend, resolved.runtime)
        else:
            meta = repository.read_meta(name, version)
            if config.reshapes:
                raise RepositoryError(
                    f"{config.source}: reshape applies to a user's model file; version "
                    f"{version} is one twinserve trained (its model.json has its shapes)"
                )
            check_signature(config, meta.signature, version)
            unavailable = _load_runtimes(
                backend, path, meta, models, label=f"{name} v{version}", threads=threads
            )
            default = _default_runtime(config, models, unavailable, name, version)
        loaded = LoadedVersion(
            name,
            version,
            meta,
            models,
            default,
            tuple(backend.runtimes),
            unavailable,
            batching=config.batching,
            max_batch_size=config.max_batch_size,
            config=declared,
            model_file=layout.file if user else "",
        )
        step = _WARMING
        warm_up(loaded)
        loaded.load_seconds = time.perf_counter() - started
    except BaseException as exc:
        for model in models.values():
            model.close()
        if isinstance(exc, ServingError) or not isinstance(exc, Exception):
            raise
        if user and step == _WARMING:
            # The user's own model failed on zeros of its declared inputs: what the
            # framework said (its first line) is what they need to fix their configuration.
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise RepositoryError(f"{step}: {type(exc).__name__}: {first}") from exc
        # Not ours: its text stays in the log (the chained cause), clients get the step.
        raise RepositoryError(step) from exc
    logger.info("loaded %s version %d (runtimes: %s)", name, version, ", ".join(models))
    return loaded


def _default_runtime(
    config: ModelConfig,
    models: dict[str, Model],
    unavailable: dict[str, str],
    name: str,
    version: int,
) -> str:
    default = config.runtime if config.runtime in models else "native"
    if default != config.runtime:
        logger.warning(
            "%s v%d has no %s runtime (%s); serving native by default",
            name,
            version,
            config.runtime,
            unavailable.get(config.runtime, "not exported"),
        )
    return default


def _not_exported(backend: Backend, served: str) -> dict[str, str]:
    """Why a user's version offers none of the service's other runtimes."""
    return {
        runtime: "a user's model file is served as it is, by one runtime"
        for runtime in backend.runtimes
        if runtime != served
    }


def _load_runtimes(
    backend: Backend,
    path: Path,
    meta: VersionMeta,
    models: dict[str, Model],
    *,
    label: str,
    threads: int,
) -> dict[str, str]:
    """Loads every usable runtime of the version into `models` (filled as they load, so
    the caller can close them if a later step fails); returns runtime -> why it is not
    offered. Native must load; another runtime that fails is left out."""
    unavailable = {
        runtime: f"its export was refused: {record.reason or 'unknown reason'}"
        for runtime, record in meta.runtimes.items()
        if record.status is RuntimeStatus.REFUSED
    }
    for runtime in meta.usable_runtimes():
        if runtime not in backend.runtimes:
            continue
        try:
            models[runtime] = load_runtime(backend, path, meta, runtime, threads=threads)
        except ServingError as exc:
            if runtime == "native":
                raise
            logger.warning(
                "%s: %s runtime failed to load: %s",
                label,
                runtime,
                exc.message,
                exc_info=True,  # the cause a short message leaves out
            )
            unavailable[runtime] = f"it failed to load: {exc.message}"
    return unavailable


_TIMED_CALLS = 10


def warm_up_inputs(meta: VersionMeta) -> Mapping[str, np.ndarray]:
    """Zeros for every input of the signature, each in the array its datatype decodes to (as
    a request's would be, read-only), dynamic dimensions as 1: a batch-1 request."""
    return {
        spec.name: zeros(spec.datatype, tuple(1 if dim < 0 else dim for dim in spec.shape))
        for spec in meta.signature.inputs
    }


def warm_up(loaded: LoadedVersion) -> None:
    """Batch-1 calls on every runtime before the version is offered, so the first request does
    not pay for lazy setup (graph tracing, allocator growth); the calls after the first are
    timed, which tells the data plane which runtimes are cheap enough to call inline."""
    inputs = warm_up_inputs(loaded.meta)
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
