"""twinserve's framework-free core, in layers; each may import only those above it:

    serving.errors, serving.types   the error tree (one gRPC status each) and tensor specs
    serving.protocol                OIP names, the tensor codec, message translation
    serving.rpc                     the gRPC kit: server factory, interceptors, security, metrics
    serving.backend                 the contract a framework implements, and a fake one
    serving.engine                  repository, model manager, data plane, batching, servicer
    serving.training                training jobs, their data and servicer
    serving.app                     a framework service assembled: settings, server, main

The gateway stands on `serving.protocol` and `serving.rpc` only. tests/unit/test_layers.py
checks these rules on the import graph. This module imports nothing heavy on purpose: every
process, the gateway's too, runs it.
"""

from serving.backend import Backend, Model, TrainResult, TrainSpec
from serving.errors import ServingError
from serving.types import Signature, TensorSpec

__all__ = [
    "Backend",
    "Model",
    "ServingError",
    "Signature",
    "TensorSpec",
    "TrainResult",
    "TrainSpec",
]
