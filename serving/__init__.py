"""twinserve's framework-free core: protocol servicer, codec, repository, errors, settings."""

from serving.backend import Backend, Model, TrainResult, TrainSpec
from serving.errors import ServingError
from serving.settings import ServiceSettings
from serving.types import Signature, TensorSpec

__all__ = [
    "Backend",
    "Model",
    "ServiceSettings",
    "ServingError",
    "Signature",
    "TensorSpec",
    "TrainResult",
    "TrainSpec",
]
