"""Keras versions of the shared architectures (`serving.backend.architectures`), layer for layer.

Every builder returns two functional models over the same layers: `trained`, whose output the
training objective is taken on (the normalised target, or logits), and `served`, what the
SavedModel returns (raw target units, or softmax probabilities). Normalisation statistics
are adapted from the training rows only and become part of both graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from serving.backend import TrainSpec

__all__ = ["ARCHITECTURES", "Built"]


@dataclass(frozen=True, slots=True)
class Built:
    trained: keras.Model
    served: keras.Model
    loss: keras.losses.Loss  # the training objective, averaged over rows
    # y as the `trained` output is compared with it: normalised, or class indices as they are.
    target: Callable[[np.ndarray], np.ndarray]
    # The validation metric of EPOCH_METRICS on raw x and y, for use inside a tf.function.
    metric: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _dense(units: int, name: str, activation: str | None = None) -> keras.layers.Dense:
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        name=name,
    )


def _conv(filters: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        activation="relu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        name=name,
    )


def _regressor(spec: TrainSpec, body: list[keras.layers.Layer]) -> Built:
    """served(x) = body((x - x_mean) / x_std) * y_std + y_mean.

    Training happens in the normalised space: raw house sizes in the thousands would make one
    learning rate wrong for both the weights and the biases."""
    x = np.asarray(spec.x, dtype=np.float32)
    y = np.asarray(spec.y, dtype=np.float32)
    normalize = keras.layers.Normalization(name="normalize")  # per feature (the last axis)
    normalize.adapt(x)
    y_mean = float(np.mean(y))
    # A constant target has no spread to scale by; 1.0 leaves it unscaled.
    y_std = float(np.std(y)) or 1.0

    inputs = keras.Input(shape=x.shape[1:], name="x")
    z = normalize(inputs)
    for layer in body:
        z = layer(z)
    outputs = keras.layers.Rescaling(scale=y_std, offset=y_mean, name="denormalize")(z)
    served = keras.Model(inputs, outputs, name=spec.architecture)

    def rmse(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.sqrt(tf.reduce_mean(tf.square(served(x, training=False) - y)))

    return Built(
        trained=keras.Model(inputs, z, name=f"{spec.architecture}_normalised"),
        served=served,
        loss=keras.losses.MeanSquaredError(),
        target=lambda values: (np.asarray(values, np.float32) - y_mean) / y_std,
        metric=rmse,
    )


def _linear(spec: TrainSpec) -> Built:
    """`linear`: Dense(1)."""
    return _regressor(spec, [_dense(1, "dense")])


def _mlp(spec: TrainSpec) -> Built:
    """`mlp`: Dense(64, relu) -> Dense(64, relu) -> Dense(1)."""
    return _regressor(
        spec, [_dense(64, "dense_1", "relu"), _dense(64, "dense_2", "relu"), _dense(1, "dense_3")]
    )


def _cnn(spec: TrainSpec) -> Built:
    """`cnn`: Conv2D(16, 3, same, relu) -> MaxPool2D(2) -> Conv2D(32, 3, same, relu)
    -> MaxPool2D(2) -> Flatten -> Dense(64, relu) -> Dense(classes), trained on logits with
    sparse categorical cross-entropy and served as softmax probabilities. Inputs are NHWC."""
    inputs = keras.Input(shape=spec.x.shape[1:], name="x")
    logits = inputs
    for layer in (
        _conv(16, "conv_1"),
        keras.layers.MaxPool2D(2, name="pool_1"),
        _conv(32, "conv_2"),
        keras.layers.MaxPool2D(2, name="pool_2"),
        keras.layers.Flatten(name="flatten"),
        _dense(64, "dense_1", "relu"),
        _dense(spec.num_classes, "logits"),
    ):
        logits = layer(logits)
    trained = keras.Model(inputs, logits, name="cnn_logits")

    def accuracy(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(trained(x, training=False), axis=1, output_type=y.dtype)
        return tf.reduce_mean(tf.cast(tf.equal(predicted, y), tf.float32))

    return Built(
        trained=trained,
        served=keras.Model(inputs, keras.layers.Softmax(name="probabilities")(logits), name="cnn"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        target=lambda values: np.asarray(values, np.int64),
        metric=accuracy,
    )


ARCHITECTURES: dict[str, Callable[[TrainSpec], Built]] = {
    "linear": _linear,
    "mlp": _mlp,
    "cnn": _cnn,
}
