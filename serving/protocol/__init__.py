"""The Open Inference Protocol (KServe V2 / Triton gRPC) as data: its parameter and extension
names (`names`), the tensor codec between protobuf contents and NumPy arrays (`codec`), and the
translation of whole messages to the core's types (`translate`).

May import: `serving.errors`, `serving.types`, `serving.pb`, NumPy. Nothing that serves,
routes or computes: the gateway and every service stand on it.
"""
