"""Building Open Inference Protocol requests for `house_price` and reading the answers."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from serving.backend import TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.protocol.codec import param_to_pb
from serving.training.datasets import HOUSE_PRICE_INPUT, HOUSE_PRICE_OUTPUT
from serving.training.seed import SEED_MODEL
from serving.training.trainer import train_version
from serving.types import ParamValue

__all__ = [
    "HOUSE_PRICE_INPUT",
    "HOUSE_PRICE_OUTPUT",
    "SEED_MODEL",
    "eventually",
    "price_request",
    "prices",
    "rpc_error",
    "train_slope",
]


def price_request(
    *sizes: float,
    model: str = SEED_MODEL,
    version: str = "",
    id: str = "",
    typed: bool = False,
    parameters: Mapping[str, ParamValue] | None = None,
) -> pb.ModelInferRequest:
    x = np.array(sizes, dtype=np.float32).reshape(-1, 1)
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=id)
    tensor = request.inputs.add(name=HOUSE_PRICE_INPUT, datatype="FP32", shape=x.shape)
    if typed:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        request.raw_input_contents.append(x.tobytes())
    for key, value in (parameters or {}).items():
        param_to_pb(value, request.parameters[key])
    return request


def prices(response: pb.ModelInferResponse) -> list[float]:
    """The predicted prices, from raw or typed contents."""
    (output,) = response.outputs
    assert (output.name, output.datatype) == (HOUSE_PRICE_OUTPUT, "FP32")
    if response.raw_output_contents:
        (raw,) = response.raw_output_contents
        data = np.frombuffer(raw, dtype="<f4")
    else:
        data = np.array(output.contents.fp32_contents, dtype=np.float32)
    return cast(list[float], data.reshape(tuple(output.shape)).ravel().tolist())


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """Makes a call that must fail; returns its status code and details."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    error = cast(grpc.Call, info.value)
    return error.code(), error.details() or ""


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Polls `check` until it holds or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def train_slope(
    repository: Path, model: str, slope: float, backend: AffineBackend | None = None
) -> int:
    """Stores the next version of a house-price `model` answering price = slope x size;
    returns the version."""
    x = np.linspace(500.0, 2750.0, 16, dtype=np.float32).reshape(-1, 1)
    spec = TrainSpec(
        architecture="linear",
        x=x,
        y=slope * x,
        x_val=x[:0],
        y_val=x[:0],
        input_name=HOUSE_PRICE_INPUT,
        output_name=HOUSE_PRICE_OUTPUT,
    )
    backend = backend or AffineBackend()
    version, _ = train_version(ModelRepository(repository), backend, model, spec, f"{slope} x")
    return version
