"""Names the Open Inference Protocol, Triton's extensions and twinserve's own additions give
to request and response parameters and server capabilities: each spelled once, here."""

from __future__ import annotations

__all__ = ["EXTENSIONS", "FRAMEWORK_PARAM", "RUNTIME_PARAM"]

# Triton's server extensions that every twinserve server (service or gateway) implements,
# reported by ServerMetadata.
EXTENSIONS = (
    "binary_tensor_data",
    "parameters",
    "model_repository",
    "model_configuration",
    "statistics",
)

# twinserve's request and response parameters: which framework service a request is routed to
# (and answered by), and which of its runtimes ran it ("native", "onnx", ...).
FRAMEWORK_PARAM = "framework"
RUNTIME_PARAM = "runtime"
