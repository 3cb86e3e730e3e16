"""Building twinserve.v1 training requests, reading their event streams, and asking the
trained models for predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb

__all__ = [
    "inline",
    "kinds",
    "line",
    "predict",
    "train_request",
    "version_dirs",
]

INLINE_INPUT, INLINE_OUTPUT = "input", "output"


def inline(x: Any, y: Any) -> tpb.Dataset:
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    return tpb.Dataset(
        inline=tpb.InlineData(
            inputs=tpb.Tensor(shape=x.shape, values=x.ravel().tolist()),
            targets=tpb.Tensor(shape=y.shape, values=y.ravel().tolist()),
        )
    )


def line(slope: float, intercept: float, rows: int = 10) -> tpb.Dataset:
    """Inline data on the line y = slope x + intercept, x = 0 .. rows - 1."""
    x = np.arange(rows, dtype=np.float32).reshape(-1, 1)
    return inline(x, slope * x + intercept)


def train_request(
    model: str,
    dataset: tpb.Dataset | None = None,
    *,
    architecture: str = "linear",
    framework: str = "",
    **hyperparameters: Any,
) -> tpb.TrainRequest:
    """A TrainRequest; by default linear on y = 3x + 1, 3 epochs."""
    hyperparameters.setdefault("epochs", 3)
    return tpb.TrainRequest(
        framework=framework,
        model_name=model,
        architecture=architecture,
        dataset=line(3, 1) if dataset is None else dataset,
        hyperparameters=tpb.HyperParameters(
            **{k: v for k, v in hyperparameters.items() if v is not None}
        ),
    )


def kinds(events: Sequence[tpb.TrainEvent]) -> list[str]:
    return [event.WhichOneof("event") or "" for event in events]


def predict(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    rows: Sequence[Sequence[float]],
    *,
    version: str = "",
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> tuple[str, list[float]]:
    """(the version that answered, the predictions) for an inline-trained model."""
    x = np.asarray(rows, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=INLINE_INPUT, datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    response = stub.ModelInfer(request, metadata=metadata)
    (output,) = response.outputs
    assert output.name == INLINE_OUTPUT
    if response.raw_output_contents:
        (raw,) = response.raw_output_contents
        return response.model_version, np.frombuffer(raw, dtype="<f4").tolist()
    return response.model_version, list(output.contents.fp32_contents)


def version_dirs(repository: Path, model: str) -> list[str]:
    """Everything under `<repository>/<model>/` (no model directory: nothing)."""
    directory = repository / model
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []
