"""Turns a training order (architecture, dataset, hyper-parameters) into a validated plan.

Everything a client can get wrong is checked here, before a job exists, so a bad order is
refused with INVALID_ARGUMENT and nothing is written anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from serving.backend import architectures
from serving.engine.repository import ModelRepository, check_model_name
from serving.errors import InvalidInput, ResourceExhausted
from serving.training.csv_files import CsvData, read_csv
from serving.training.datasets import load_builtin, validation_split
from serving.training.trainer import check_signature, check_trainable, served_signature

__all__ = [
    "BuiltinData",
    "CsvData",
    "InlineData",
    "TrainOrder",
    "TrainPlan",
    "TrainingLimits",
    "plan_training",
]

MAX_EPOCHS = 100_000
# NumPy's generators take no negative seed, and Keras reseeds NumPy's legacy one (< 2**32).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class BuiltinData:
    name: str


@dataclass(frozen=True, slots=True)
class InlineData:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True, slots=True)
class TrainingLimits:
    """How big a job this service takes (ServiceSettings.train_max_*, documented in the
    README); past any of them a job is refused with RESOURCE_EXHAUSTED before anything is
    built. The defaults keep a job of any architecture well inside a 2 GiB pod."""

    max_classes: int = 1000
    # Values in one training row: features, or height x width x channels.
    max_input_values: int = 65_536
    max_parameters: int = 10_000_000
    # Values in all training inputs together (64 MiB as FP32).
    max_data_values: int = 16 * 1024 * 1024
    # Input values in one batch: the batch's activations grow with it (the CNN keeps ~100
    # values per input pixel for the backward pass).
    max_batch_values: int = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TrainOrder:
    """A training request as the client sent it; None means "the default"."""

    model_name: str
    architecture: str
    dataset: BuiltinData | InlineData | CsvData | None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    seed: int | None = None
    validation_split: float | None = None
    device: str = ""
    # Store the version even if its inputs/outputs differ from the served version's.
    replace_signature: bool = False


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """A validated order: everything a job needs, defaults filled in."""

    model_name: str
    architecture: architectures.Architecture
    dataset: str  # a description for metadata and listings
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_name: str
    output_name: str
    num_classes: int
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Literal["adam", "sgd"]
    seed: int
    validation_split: float
    device: str
    hyperparameters: dict[str, object] = field(default_factory=dict)
    replace_signature: bool = False


def _targets(y: np.ndarray, task: str, max_classes: int) -> tuple[np.ndarray, int]:
    # One target per row: [N] or [N, 1]. Reshaping anything wider would pair rows with
    # another row's targets.
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
        wanted = "[N, 1]" if task == "regression" else "[N]"
        raise InvalidInput(f"targets must have shape {wanted}, got {list(y.shape)}")
    if task == "regression":
        return y.reshape(-1, 1).astype(np.float32), 0
    flat = y.reshape(-1)
    if not np.isfinite(flat).all() or (flat != np.round(flat)).any():
        raise InvalidInput("class labels must be whole numbers")
    # Before the cast: the number of classes sizes the final layer, and a label of 1e9
    # would ask for a billion outputs.
    if flat.size and flat.max() >= max_classes:
        top = int(flat.max())
        raise ResourceExhausted(
            f"class labels go up to {top}, which makes {top + 1} "
            f"classes; this service trains at most {max_classes} "
            "(TWINSERVE_TRAIN_MAX_CLASSES): number the classes 0, 1, 2, ..."
        )
    labels = flat.astype(np.int64)
    return labels, int(labels.max()) + 1 if labels.size else 0


def _positive_int(name: str, value: int | None, default: int, limit: int) -> int:
    if value is None:
        return default
    if not 0 < value <= limit:
        raise InvalidInput(f"{name} must be between 1 and {limit}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class _Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_name: str
    output_name: str
    description: str
    num_classes: int


def _load(
    order: TrainOrder, arch: architectures.Architecture, data_dir: Path, limits: TrainingLimits
) -> _Data:
    if order.dataset is None:
        raise InvalidInput("the request names no dataset")
    if isinstance(order.dataset, BuiltinData):
        builtin = load_builtin(order.dataset.name)
        if builtin.task != arch.task:
            raise InvalidInput(
                f"dataset '{builtin.name}' is for {builtin.task}, architecture "
                f"'{arch.name}' does {arch.task}"
            )
        return _Data(
            builtin.x_train,
            builtin.y_train,
            builtin.x_test,
            builtin.y_test,
            builtin.input_name,
            builtin.output_name,
            builtin.name,
            builtin.num_classes,
        )
    if isinstance(order.dataset, InlineData):
        x, raw_y, description = order.dataset.x, order.dataset.y, "inline"
        if x.size == 0 or raw_y.size == 0:
            raise InvalidInput("inline data is empty")
    else:
        x, raw_y, description = read_csv(
            order.dataset,
            data_dir,
            max_columns=limits.max_input_values,
            max_values=limits.max_data_values,
        )
    if not np.isfinite(raw_y).all():
        raise InvalidInput("targets contain NaN or infinite values")
    y, num_classes = _targets(raw_y, arch.task, limits.max_classes)
    output_name = "probabilities" if arch.task == "classification" else "output"
    return _Data(
        x.astype(np.float32), y, None, None, "input", output_name, description, num_classes
    )


def _check_size(
    arch: architectures.Architecture,
    x: np.ndarray,
    num_classes: int,
    batch_size: int,
    limits: TrainingLimits,
) -> None:
    """RESOURCE_EXHAUSTED for a job past the service's limits, from shapes alone: nothing
    of the model exists yet."""
    row = math.prod(x.shape[1:])
    if row > limits.max_input_values:
        raise ResourceExhausted(
            f"one training row holds {row} values (shape {list(x.shape[1:])}); this service "
            f"trains on rows of at most {limits.max_input_values} "
            "(TWINSERVE_TRAIN_MAX_INPUT_VALUES): send smaller images or fewer features"
        )
    if x.size > limits.max_data_values:
        raise ResourceExhausted(
            f"the training inputs hold {x.size} values; this service trains on at most "
            f"{limits.max_data_values} (TWINSERVE_TRAIN_MAX_DATA_VALUES)"
        )
    parameters = architectures.parameter_count(arch, x.shape[1:], num_classes)
    if parameters > limits.max_parameters:
        raise ResourceExhausted(
            f"architecture '{arch.name}' on rows of shape {list(x.shape[1:])} with "
            f"{num_classes or 1} output(s) has {parameters} parameters; this service trains "
            f"at most {limits.max_parameters} (TWINSERVE_TRAIN_MAX_PARAMETERS)"
        )
    batch = min(batch_size, len(x)) * row
    if batch > limits.max_batch_values:
        raise ResourceExhausted(
            f"a batch of {min(batch_size, len(x))} rows of {row} values holds {batch} "
            f"values; this service trains on batches of at most {limits.max_batch_values} "
            "(TWINSERVE_TRAIN_MAX_BATCH_VALUES): set a smaller batch_size"
        )


def plan_training(
    order: TrainOrder,
    data_dir: Path,
    limits: TrainingLimits | None = None,
    repository: ModelRepository | None = None,
) -> TrainPlan:
    """Validates `order` against the service's `limits` and, given the `repository`, the
    signature of the version it serves now (see trainer.check_signature)."""
    limits = limits or TrainingLimits()
    check_model_name(order.model_name)
    arch = architectures.get(order.architecture)
    data = _load(order, arch, data_dir, limits)
    architectures.check_data(arch, data.x, data.y, data.num_classes)

    epochs = _positive_int("epochs", order.epochs, arch.epochs, MAX_EPOCHS)
    batch_size = _positive_int("batch_size", order.batch_size, arch.batch_size, 1 << 20)
    learning_rate = arch.learning_rate if order.learning_rate is None else order.learning_rate
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidInput(f"learning_rate must be a finite positive number, got {learning_rate}")
    optimizer = order.optimizer or "adam"
    if optimizer not in ("adam", "sgd"):
        raise InvalidInput(f"unknown optimizer '{optimizer}' (use 'adam' or 'sgd')")
    fraction = 0.2 if order.validation_split is None else order.validation_split
    if not 0 <= fraction < 1:
        raise InvalidInput(f"validation_split must be in [0, 1), got {fraction}")
    seed = order.seed or 0
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    _check_size(arch, data.x, data.num_classes, batch_size, limits)
    x_train, y_train, x_val, y_val = validation_split(data.x, data.y, fraction, seed)
    if len(x_train) < 1:
        raise InvalidInput("no training rows are left after the validation split")
    if repository is not None:
        check_trainable(repository, order.model_name)
        new = architectures.signature_for(
            arch, data.x, data.input_name, data.output_name, data.num_classes
        )
        served = served_signature(repository, order.model_name)
        check_signature(order.model_name, served, new, replace=order.replace_signature)
    return TrainPlan(
        model_name=order.model_name,
        architecture=arch,
        dataset=data.description,
        x=x_train,
        y=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=data.x_test,
        y_test=data.y_test,
        input_name=data.input_name,
        output_name=data.output_name,
        num_classes=data.num_classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer="sgd" if optimizer == "sgd" else "adam",
        seed=seed,
        validation_split=fraction,
        device=order.device,
        replace_signature=order.replace_signature,
        hyperparameters={
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "optimizer": optimizer,
            "seed": seed,
            "validation_split": fraction,
        },
    )
