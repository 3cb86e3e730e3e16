"""The seed model as the tests see it, and its requests: tritonclient inputs, and raw
messages built with tritonclient's own generated protobuf code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

MODEL = "house_price"
INPUT = "size_sqft"
OUTPUT = "price_k"
# The seed model learns price_k = 0.2 * size_sqft.
SLOPE = 0.2
TOLERANCE = 1.0


def sizes_array(sizes: Sequence[float]) -> np.ndarray:
    return np.asarray(sizes, dtype=np.float32).reshape(-1, 1)


def expected_prices(sizes: Sequence[float]) -> np.ndarray:
    return SLOPE * sizes_array(sizes)


def triton_input(sizes: Sequence[float]) -> grpcclient.InferInput:
    array = sizes_array(sizes)
    tensor = grpcclient.InferInput(INPUT, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def raw_request(sizes: Sequence[float], **fields: object) -> service_pb2.ModelInferRequest:
    """A raw-contents request for `sizes`, as tritonclient would send it."""
    array = sizes_array(sizes)
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    request.inputs.add(name=INPUT, datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


def typed_request(sizes: Sequence[float], **fields: object) -> service_pb2.ModelInferRequest:
    """A request whose input travels in typed `contents.fp32_contents`."""
    array = sizes_array(sizes)
    request = service_pb2.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=array.shape)
    tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request
