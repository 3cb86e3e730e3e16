"""The inference engine of a framework service: the model repository and its configuration
(`repository`, `model_config`, Triton's config.pbtxt in `triton_config`), loading and hot swap
(`manager`, `loading`, `loaded`, `runtimes`, `onnx_model`), the protocol-neutral data plane
with dynamic batching and statistics (`dataplane`, `batching`, `statistics`, `metrics`) and the
OIP servicer that translates gRPC to it (`servicer`).

May import: `serving.errors`, `serving.types`, `serving.protocol`, `serving.rpc`,
`serving.backend`, `serving.pb` (and protobuf), NumPy, ONNX Runtime. Never training, the app
layer or a framework: frameworks reach the engine only through the backend contract.
"""
