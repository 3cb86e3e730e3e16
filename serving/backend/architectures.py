"""The architectures both frameworks implement, layer for layer, and what each expects.

- linear (regression, input [N, 1]): Dense(1)
- mlp (regression, input [N, F]): Dense(64, relu) -> Dense(64, relu) -> Dense(1)
- cnn (classification, input [N, H, W, C]): Conv(16, 3x3, same, relu) -> MaxPool(2)
  -> Conv(32, 3x3, same, relu) -> MaxPool(2) -> Flatten -> Dense(64, relu)
  -> Dense(classes) -> softmax

Regression models normalise inputs per feature and the target (mean/std of the training
split) and de-normalise the output, so the served model takes and returns raw units.
Weights: glorot (Xavier) uniform, zero biases. Images are fed as they come ([0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from serving.errors import InvalidInput
from serving.types import Signature, TensorSpec

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "check_data",
    "parameter_count",
    "signature_for",
]

# The CNN pools twice by 2 (rounding down): a smaller image leaves nothing to flatten.
CNN_MIN_SIDE = 4


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    task: Literal["regression", "classification"]
    input_rank: int  # dimensions after the batch one; 0 = any >= 1
    epochs: int
    batch_size: int
    learning_rate: float


# Defaults chosen so both frameworks pass the project's bars (house-price 1800 -> 360,
# house_features RMSE, digits >= 95 %) in seconds on 2 CPU cores.
ARCHITECTURES: dict[str, Architecture] = {
    "linear": Architecture("linear", "regression", 1, 200, 32, 0.05),
    "mlp": Architecture("mlp", "regression", 1, 60, 32, 0.003),
    "cnn": Architecture("cnn", "classification", 3, 15, 32, 0.003),
}


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise InvalidInput(f"unknown architecture '{name}' (supported: {known})") from None


def check_data(arch: Architecture, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Raises InvalidInput unless x, y fit the architecture."""
    if x.ndim != arch.input_rank + 1:
        raise InvalidInput(
            f"architecture '{arch.name}' takes inputs of rank {arch.input_rank + 1} "
            f"(batch first), got shape {list(x.shape)}"
        )
    if arch.name == "cnn" and min(x.shape[1:3]) < CNN_MIN_SIDE:
        raise InvalidInput(
            f"architecture 'cnn' takes images of at least {CNN_MIN_SIDE}x{CNN_MIN_SIDE} pixels "
            f"(it pools twice by 2), got {x.shape[1]}x{x.shape[2]}"
        )
    if arch.name == "linear" and x.shape[1] != 1:
        raise InvalidInput(f"architecture 'linear' takes one feature, got {x.shape[1]}")
    if len(x) != len(y):
        raise InvalidInput(f"inputs have {len(x)} rows but targets have {len(y)}")
    if len(x) < 2:
        raise InvalidInput(f"at least 2 training rows are needed, got {len(x)}")
    if not np.isfinite(x).all():
        raise InvalidInput("inputs contain NaN or infinite values")
    if arch.task == "regression":
        if y.ndim != 2 or y.shape[1] != 1:
            raise InvalidInput(f"regression targets must have shape [N, 1], got {list(y.shape)}")
        if not np.isfinite(y).all():
            raise InvalidInput("targets contain NaN or infinite values")
    else:
        if y.ndim != 1:
            raise InvalidInput(f"class labels must have shape [N], got {list(y.shape)}")
        if num_classes < 2 or y.min() < 0 or y.max() >= num_classes:
            raise InvalidInput(
                f"class labels must be integers in [0, {num_classes}) with at least 2 classes"
            )


def parameter_count(arch: Architecture, row_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of `arch` for input rows of `row_shape` (batch left out), from
    the layer list above, so a job can be sized before any framework builds it. Python
    integers: an absurd shape gives a big number, not an overflow."""
    features = math.prod(row_shape)
    if arch.name == "linear":
        return features + 1
    if arch.name == "mlp":
        return (features * 64 + 64) + (64 * 64 + 64) + (64 + 1)
    height, width, channels = row_shape
    flattened = (height // 2 // 2) * (width // 2 // 2) * 32
    return (
        (3 * 3 * channels * 16 + 16)
        + (3 * 3 * 16 * 32 + 32)
        + (flattened * 64 + 64)
        + (64 * num_classes + num_classes)
    )


def signature_for(
    arch: Architecture, x: np.ndarray, input_name: str, output_name: str, num_classes: int
) -> Signature:
    out = (-1, num_classes) if arch.task == "classification" else (-1, 1)
    return Signature(
        inputs=(TensorSpec(input_name, "FP32", (-1, *x.shape[1:])),),
        outputs=(TensorSpec(output_name, "FP32", out),),
    )
