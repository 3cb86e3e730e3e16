"""A user's version in Triton's layout (a model file, no `model.json`): the signature it is
served by and the model that serves it.

The signature is `config.pbtxt`'s inputs and outputs where it declares them; what it leaves
out is auto-completed from the file, as Triton does: a SavedModel's serving signature
(`Backend.describe`), an ONNX graph (`describe_onnx`). TorchScript declares nothing, so its
configuration must. A fully auto-completed model whose every input and output has a dynamic
first dimension gets Triton's default max_batch_size (the service's setting, 4 unless set)
and, with it above 1 and no batcher configured, a dynamic batcher with default settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from serving.backend import Backend, Model, ModelFile
from serving.engine.layout import ONNX_PLATFORM, ModelLayout
from serving.engine.model_config import BatchingConfig, ModelConfig
from serving.engine.onnx_model import OnnxModel, describe_onnx
from serving.engine.repository import RuntimeRecord, VersionMeta
from serving.errors import RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["UserVersion", "load_user_model", "resolve_user_version"]


@dataclass(frozen=True, slots=True)
class UserVersion:
    """What serves a user's version: its metadata (signature, platform, the one runtime),
    the configuration it runs by (auto-completed batching included) and its file."""

    meta: VersionMeta
    config: ModelConfig
    file: ModelFile
    runtime: str


def _runtime_for(platform: str, backend: Backend) -> str:
    """The name this service gives the runtime serving `platform` ("onnx" on a TensorFlow
    service, "native" on the ONNX service and for the backend's own platform)."""
    if platform == backend.triton_platform:
        return "native"
    named = [name for name, served in backend.runtimes.items() if served == platform]
    return named[0] if named else "native"


def _declared(specs: tuple[TensorSpec, ...] | None, batched: bool) -> tuple[TensorSpec, ...] | None:
    if specs is None:
        return None
    return tuple(replace(s, shape=(-1, *s.shape)) if batched else s for s in specs)


def _described(backend: Backend, platform: str, path: Path) -> Signature | None:
    return describe_onnx(path) if platform == ONNX_PLATFORM else backend.describe(path)


def resolve_user_version(
    backend: Backend,
    version_dir: Path,
    layout: ModelLayout,
    config: ModelConfig,
    *,
    default_max_batch_size: int,
) -> UserVersion:
    """RepositoryError with the reason when the version cannot be served as configured."""
    path = version_dir / layout.file
    if not layout.file or not path.exists():
        raise RepositoryError(f"version {version_dir.name} has no {layout.file or 'model file'}")
    batched = config.max_batch_size > 0
    inputs = _declared(config.inputs, batched)
    outputs = _declared(config.outputs, batched)
    if inputs is None or outputs is None:
        described = _described(backend, layout.platform, path)
        if described is None:
            raise RepositoryError(
                f"{version_dir.parent.name}/config.pbtxt must declare the inputs and outputs "
                f"(input and output, each with name, data_type and dims): a {layout.platform} "
                "file declares none of its own, as in Triton"
            )
        if inputs is None and outputs is None and config.max_batch_size == 0:
            config = _auto_batch(config, described, default_max_batch_size)
        inputs = inputs if inputs is not None else described.inputs
        outputs = outputs if outputs is not None else described.outputs
    signature = Signature(inputs=inputs, outputs=outputs)
    _check_batch_dims(signature, config.max_batch_size)
    _check_labels(version_dir.parent, config)
    runtime = _runtime_for(layout.platform, backend)
    meta = VersionMeta(
        framework=backend.framework,
        platform=layout.platform,
        architecture="",
        signature=signature,
        runtimes={runtime: RuntimeRecord(layout.platform)},
    )
    return UserVersion(meta, config, ModelFile(path, _model_side(signature, config)), runtime)


def _model_side(signature: Signature, config: ModelConfig) -> Signature:
    """The tensors as the model file takes and gives them: Triton's reshape applied."""
    shapes = dict(config.reshapes)
    if not shapes:
        return signature
    batched = config.max_batch_size > 0

    def side(spec: TensorSpec) -> TensorSpec:
        shape = shapes.get(spec.name)
        if shape is None:
            return spec
        return replace(spec, shape=(-1, *shape) if batched else shape)

    return Signature(
        inputs=tuple(side(s) for s in signature.inputs),
        outputs=tuple(side(s) for s in signature.outputs),
    )


def _check_labels(model_dir: Path, config: ModelConfig) -> None:
    for output, filename in config.labels:
        if not (model_dir / filename).is_file():
            raise RepositoryError(
                f"{config.source}: output '{output}' label_filename '{filename}' is not a file "
                "in the model's directory"
            )


class _Reshaped:
    """A model whose tensors clients send and get in other shapes (Triton's reshape): the
    inputs reshaped on the way in, the outputs on the way out, the batch kept first."""

    def __init__(self, model: Model, client: Signature, own: Signature, batched: bool) -> None:
        self._model = model
        self._batched = batched
        self._in = {s.name: o.shape for s, o in zip(client.inputs, own.inputs, strict=True)}
        self._out = {s.name: s.shape for s in client.outputs}

    def _shape(self, array: np.ndarray, target: tuple[int, ...]) -> tuple[int, ...]:
        return (len(array), *target[1:]) if self._batched else target

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        fed = {
            name: array.reshape(self._shape(array, self._in[name])) if name in self._in else array
            for name, array in inputs.items()
        }
        answers = self._model.predict(fed)
        return {
            name: array.reshape(self._shape(array, self._out[name])) if name in self._out else array
            for name, array in answers.items()
        }

    def close(self) -> None:
        self._model.close()


def _auto_batch(config: ModelConfig, described: Signature, default: int) -> ModelConfig:
    """Triton's default-max-batch-size for a model whose every tensor is batched."""
    tensors = (*described.inputs, *described.outputs)
    if default < 1 or not tensors or any(not s.shape or s.shape[0] != -1 for s in tensors):
        return config
    batching = config.batching
    if batching is None and default > 1:
        batching = BatchingConfig(max_batch_size=default)
    return replace(config, max_batch_size=default, batching=batching)


def _check_batch_dims(signature: Signature, max_batch_size: int) -> None:
    if max_batch_size == 0:
        return
    for spec in (*signature.inputs, *signature.outputs):
        if not spec.shape or spec.shape[0] != -1:
            raise RepositoryError(
                f"max_batch_size {max_batch_size}, but '{spec.name}' has no batch dimension "
                f"(shape {list(spec.shape)})"
            )


def load_user_model(backend: Backend, user: UserVersion, *, threads: int) -> Model:
    own = user.file.signature  # what the file takes and gives
    model: Model
    if user.meta.platform == ONNX_PLATFORM:
        model = OnnxModel(
            user.file.path,
            [spec.name for spec in own.inputs],
            [spec.name for spec in own.outputs],
            threads=threads,
            device=backend.device,
            signature=own,
        )
    else:
        model = backend.load_file(user.file)
    if own == user.meta.signature:
        return model
    return _Reshaped(model, user.meta.signature, own, user.config.max_batch_size > 0)
