"""twinserve's load test: a reusable load generator (`loadtest.generator`) and the latency
matrix of TensorFlow vs PyTorch vs ONNX Runtime on CPU and GPU (`python -m loadtest`)."""

from loadtest.checks import Checker, OutputClose, output_array
from loadtest.generator import ClientFailure, ClientPool, closed_loop, default_processes, open_loop
from loadtest.result import PERCENTILES, LoadResult

__all__ = [
    "PERCENTILES",
    "Checker",
    "ClientFailure",
    "ClientPool",
    "LoadResult",
    "OutputClose",
    "closed_loop",
    "default_processes",
    "open_loop",
    "output_array",
]
