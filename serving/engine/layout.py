"""Triton's repository layout: which platform a model is, the file each of its versions holds,
and whether this service serves it.

A version directory is ours when it holds `model.json` (what our training writes); otherwise it
is a user's, in Triton's layout: `<model>/<version>/<file>`, the file being the configuration's
`default_model_filename` or the platform's default (`model.savedmodel`, `model.pt`,
`model.onnx`). Without `platform` or `backend` in `config.pbtxt` (or with no config at all)
the platform is read off the file found, as Triton's auto-completion does.

Every service runs ONNX Runtime (the core does), so every service serves `onnxruntime_onnx`
models besides its backend's own platform. A model of a platform another twinserve service
serves is skipped here (one log line); a platform no twinserve service serves is a load failure
with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from serving.backend import Backend
from serving.engine.model_config import ModelConfig
from serving.engine.repository import META_FILE
from serving.errors import RepositoryError

__all__ = [
    "ONNX_PLATFORM",
    "PLATFORMS",
    "ModelLayout",
    "Platform",
    "check_platform",
    "model_layout",
    "served_platforms",
]

ONNX_PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True, slots=True)
class Platform:
    """A Triton platform twinserve serves: its backend's name and its default model file."""

    name: str
    backend: str
    default_file: str


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform("tensorflow_savedmodel", "tensorflow", "model.savedmodel"),
        Platform("pytorch_libtorch", "pytorch", "model.pt"),
        Platform(ONNX_PLATFORM, "onnxruntime", "model.onnx"),
    )
}
_BY_BACKEND = {p.backend: p for p in PLATFORMS.values()}
# What a `default_model_filename` with no platform beside it is, by its ending.
_BY_SUFFIX = {
    ".savedmodel": "tensorflow_savedmodel",
    ".pt": "pytorch_libtorch",
    ".onnx": ONNX_PLATFORM,
}


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """How a model's user versions are found: `platform` ("" when no version is a user's
    and the configuration names none) and the file each version holds."""

    platform: str
    files: tuple[str, ...]  # the names a user version's file may have (one once known)

    @property
    def file(self) -> str:
        return self.files[0] if len(self.files) == 1 else ""


def served_platforms(backend: Backend) -> tuple[str, ...]:
    """The Triton platforms `backend`'s service serves: its own, and ONNX (the core's)."""
    return tuple(dict.fromkeys((backend.triton_platform, ONNX_PLATFORM)))


def _configured(config: ModelConfig, backend: Backend) -> str:
    """The platform `config.pbtxt` names, by `platform` or `backend` ("" for none);
    RepositoryError for a backend no twinserve service has, or two that disagree."""
    platform = config.platform
    if config.backend:
        known = _BY_BACKEND.get(config.backend)
        if known is not None:
            implied = known.name
        elif config.backend == backend.triton_backend:
            implied = backend.triton_platform  # a backend outside Triton's (a test double)
        else:
            raise RepositoryError(
                f"{config.source}: backend '{config.backend}' is not one twinserve serves "
                f"(backends: {', '.join(_BY_BACKEND)})"
            )
        if platform and platform != implied:
            raise RepositoryError(
                f"{config.source}: platform '{platform}' and backend '{config.backend}' "
                f"disagree (backend '{config.backend}' is platform '{implied}')"
            )
        platform = implied
    return platform


def model_layout(directory: Path, config: ModelConfig, backend: Backend) -> ModelLayout:
    """The layout of the model in `directory` under `config`; RepositoryError when its
    configuration names a backend twinserve lacks or its files are ambiguous (two
    platforms' files and no platform configured)."""
    platform = _configured(config, backend)
    if config.model_filename:
        if not platform:
            platform = _BY_SUFFIX.get(Path(config.model_filename).suffix, "")
        return ModelLayout(platform, (config.model_filename,))
    if platform in PLATFORMS:
        return ModelLayout(platform, (PLATFORMS[platform].default_file,))
    if platform:
        return ModelLayout(platform, ())  # served by no file name we know: see check_platform
    found = sorted(set(_files_in(directory)))
    if len(found) > 1:
        raise RepositoryError(
            f"model '{directory.name}' has versions holding {', '.join(found)}: set "
            "`platform` in its config.pbtxt to say which one to serve"
        )
    if found:
        (name,) = found
        detected = next(p.name for p in PLATFORMS.values() if p.default_file == name)
        return ModelLayout(detected, (name,))
    return ModelLayout("", tuple(p.default_file for p in PLATFORMS.values()))


def _files_in(directory: Path) -> Iterable[str]:
    """The default model files in `directory`'s user versions (those without model.json)."""
    if not directory.is_dir():
        return  # not in the repository: the caller says so
    for entry in directory.iterdir():
        if not entry.name.isdecimal() or not entry.is_dir() or (entry / META_FILE).exists():
            continue
        for platform in PLATFORMS.values():
            if (entry / platform.default_file).exists():
                yield platform.default_file


def check_platform(layout: ModelLayout, backend: Backend, model: str) -> str | None:
    """None when this service serves the layout's platform (or none is named: the model is
    ours); else why it skips the model, another twinserve service serving that platform.
    RepositoryError when no twinserve service serves it."""
    if not layout.platform or layout.platform in served_platforms(backend):
        return None
    if layout.platform not in PLATFORMS:
        served = sorted({*PLATFORMS, backend.triton_platform})
        raise RepositoryError(
            f"model '{model}' is platform '{layout.platform}', which twinserve does not serve "
            f"(platforms: {', '.join(served)})"
        )
    return (
        f"model '{model}' is a {layout.platform} model; this {backend.framework} service "
        f"serves {' and '.join(served_platforms(backend))} models"
    )
