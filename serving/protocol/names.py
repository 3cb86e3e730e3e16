"""Names the Open Inference Protocol, Triton's extensions and twinserve's own additions give
to request, response and configuration parameters, metadata keys and server capabilities:
each spelled once, here. Clients (tritonclient, the CLI, the load test) and every server read
them from this module, so a name cannot drift between the side that sends it and the side
that reads it."""

from __future__ import annotations

__all__ = [
    "AUTHORIZATION_HEADER",
    "BINARY_OUTPUT_PARAM",
    "BINARY_PARAM",
    "CLASSIFICATION_PARAM",
    "CONFIG_ARCHITECTURE_PARAM",
    "CONFIG_RUNTIMES_PARAM",
    "EXTENSIONS",
    "FRAMEWORK_HEADER",
    "FRAMEWORK_PARAM",
    "LOAD_CONFIG_PARAM",
    "LOAD_FILE_PREFIX",
    "REQUEST_ID_HEADER",
    "RUNTIME_PARAM",
    "SHARED_MEMORY_REGION_PARAM",
]

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
# (and answered by), and which of its runtimes ran it ("native", "onnx", ...). The framework
# is also a ModelConfig parameter (who serves the model), and through the gateway it starts
# each RepositoryIndex entry's reason: `framework=<name>` (see gateway/index.py).
FRAMEWORK_PARAM = "framework"
RUNTIME_PARAM = "runtime"

# twinserve's ModelConfig parameters besides the framework: the architecture the model was
# trained as, and its runtimes (comma-separated).
CONFIG_ARCHITECTURE_PARAM = "architecture"
CONFIG_RUNTIMES_PARAM = "runtimes"

# gRPC metadata keys. The framework for calls without a request body to carry parameters
# (metadata, readiness, statistics: the gateway routes on it); a request id for the call log
# when the message has none; a bearer token (`Bearer <token>`, serving.rpc.auth).
FRAMEWORK_HEADER = "x-framework"
REQUEST_ID_HEADER = "x-request-id"
AUTHORIZATION_HEADER = "authorization"

# Triton's binary tensor data extension: a request parameter (false: every output typed,
# unless the output says otherwise) and an output parameter (this output raw or typed).
BINARY_OUTPUT_PARAM = "binary_data_output"
BINARY_PARAM = "binary_data"

# Tensor parameters of Triton extensions that twinserve does not implement: class labels
# instead of values, and tensor data in a shared memory region.
CLASSIFICATION_PARAM = "classification"
SHARED_MEMORY_REGION_PARAM = "shared_memory_region"

# RepositoryModelLoad parameters (Triton's) that replace a model's stored configuration or
# files: `config`, and one `file:<path>` per file.
LOAD_CONFIG_PARAM = "config"
LOAD_FILE_PREFIX = "file:"
