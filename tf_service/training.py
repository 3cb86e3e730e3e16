"""Trains a `tf_service.models` architecture with Keras: device, optimizer, input pipeline
and the per-epoch reports of EPOCH_METRICS."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from serving.backend import TrainSpec
from serving.errors import BackendUnavailable, InvalidInput
from tf_service.models import ARCHITECTURES, Built

__all__ = ["device_for", "train"]

_GPU = re.compile(r"(?:cuda|gpu)(?::(\d+))?")
# Keras seeds are process-global: two trainings at once would draw from each other's
# random streams and the same seed would stop giving the same weights.
_TRAIN_LOCK = threading.Lock()


def device_for(device: str) -> str:
    """The TensorFlow device for TrainSpec.device: "" and "cpu" are the CPU, "cuda", "gpu",
    "cuda:N" and "gpu:N" a GPU, which must exist."""
    if device in ("", "cpu"):
        return "/CPU:0"
    match = _GPU.fullmatch(device)
    if match is None:
        raise InvalidInput(f"unsupported device '{device}': use 'cpu', 'cuda' or 'cuda:N'")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise BackendUnavailable(f"device '{device}' requested but TensorFlow sees no GPU")
    index = int(match.group(1) or 0)
    if index >= len(gpus):
        raise BackendUnavailable(
            f"device '{device}' requested but TensorFlow sees {len(gpus)} GPU(s)"
        )
    return f"/GPU:{index}"


def train(spec: TrainSpec, device: str) -> tuple[keras.Model, dict[str, float]]:
    """Trains `spec` on `device` (from `device_for`); returns the model to serve and the last
    epoch's metrics. Reseeds Python's, NumPy's and TensorFlow's global generators, and runs
    one training at a time per process. An exception raised by `spec.on_epoch` stops
    training and propagates unchanged."""
    with _TRAIN_LOCK, tf.device(device):
        # Seeds Python, NumPy and TF, so initial weights follow from spec.seed; on CPU that
        # makes runs bit-identical without enable_op_determinism, a process-wide switch that
        # would also bind every model served here (and turns off XLA in Keras).
        keras.utils.set_random_seed(spec.seed)
        built = ARCHITECTURES[spec.architecture](spec)
        return built.served, _fit(built, spec)


def _optimizer(spec: TrainSpec) -> keras.optimizers.Optimizer:
    # The same update rules as TorchBackend's (which uses Keras's Adam epsilon, 1e-7).
    if spec.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=spec.learning_rate)
    if spec.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=spec.learning_rate, momentum=0.9)
    raise InvalidInput(f"unknown optimizer '{spec.optimizer}': use 'adam' or 'sgd'")


def _fit(built: Built, spec: TrainSpec) -> dict[str, float]:
    x = np.asarray(spec.x, dtype=np.float32)
    steps = math.ceil(len(x) / spec.batch_size)
    # One graph call runs a whole epoch (a tf.while_loop over `steps` batches): per-step
    # Python dispatch was half the run time of these small models. The loss Keras reports
    # is still the mean over the epoch's rows.
    built.trained.compile(optimizer=_optimizer(spec), loss=built.loss, steps_per_execution=steps)
    # One repeated dataset and steps_per_epoch keep a single iterator for the whole run:
    # fit() on arrays builds two input pipelines per epoch, which made 200 epochs of the
    # linear model take 20-30 s instead of about 2 s. Repeating after batching keeps the
    # epochs apart (the last batch of each is the short one).
    batches = (
        tf.data.Dataset.from_tensor_slices((x, built.target(spec.y)))
        .shuffle(len(x), seed=spec.seed)  # a new order every epoch
        .batch(spec.batch_size)
        .repeat()
    )
    epoch_end = _EpochEnd(built, spec.x_val, spec.y_val, spec.on_epoch)
    built.trained.fit(
        batches,
        epochs=spec.epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the dataset shuffles; True would only make Keras warn
        verbose=0,
        callbacks=[epoch_end],
    )
    return epoch_end.last


class _EpochEnd(keras.callbacks.Callback):  # type: ignore[misc]
    """Measures the validation loss and metric after each epoch and reports them with the
    training loss.

    One graph call on tensors already in memory, where fit(validation_data=...) would build
    and tear down an evaluation pipeline every epoch (most of the run time on a model this
    small)."""

    def __init__(
        self,
        built: Built,
        x_val: np.ndarray,
        y_val: np.ndarray,
        report: Callable[[int, Mapping[str, float]], None] | None,
    ) -> None:
        super().__init__()
        self._report = report
        self.last: dict[str, float] = {}
        self._validate: Callable[[], tuple[tf.Tensor, tf.Tensor]] | None = None
        if len(x_val):
            x = tf.constant(x_val, tf.float32)
            y = tf.constant(y_val)
            target = tf.constant(built.target(y_val))

            def validate() -> tuple[tf.Tensor, tf.Tensor]:
                return built.loss(target, built.trained(x, training=False)), built.metric(x, y)

            self._validate = tf.function(validate)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.last = {"loss": float((logs or {})["loss"])}
        if self._validate is not None:
            val_loss, val_metric = self._validate()
            self.last["val_loss"] = float(val_loss)
            self.last["val_metric"] = float(val_metric)
        if self._report is not None:
            # 1-based so the last report reads "epoch 200" of 200.
            self._report(epoch + 1, dict(self.last))
