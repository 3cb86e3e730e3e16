"""TFBackend: trains Keras models, saves them as SavedModels and serves their signatures.

Requests go through the SavedModel's `serving_default` concrete function, never
`keras.Model.predict`: predict builds a dataset and an iterator on every call (tens of
milliseconds), the concrete function is one graph execution (a fraction of a millisecond).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from serving.backend import Model, TrainResult, TrainSpec
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

__all__ = ["SAVEDMODEL_DIR", "TFBackend"]

logger = logging.getLogger(__name__)

SAVEDMODEL_DIR = "model.savedmodel"
_SERVING_KEY = "serving_default"
# Names become signature keys, and SavedModel rewrites any other character of an input's key
# (`size-sqft` is served as `size_sqft`), so requests would no longer match.
_TENSOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
# Keras seeds are process-global: two trainings at once would draw from each other's
# random streams and the same seed would stop giving the same weights.
_TRAIN_LOCK = threading.Lock()


def _build_linear(spec: TrainSpec, x: np.ndarray, y: np.ndarray) -> keras.Model:
    """y = w·x + b, learnt on standardised input and target so one Adam step size suits both
    the slope (~0.2) and the intercept (hundreds); the output layer undoes the scaling."""
    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(x)
    y_mean = float(np.mean(y))
    # A constant target has no spread to scale by; 1.0 leaves it unscaled.
    y_std = float(np.std(y)) or 1.0
    inputs = keras.Input(shape=(1,), name=spec.input_name)
    z = keras.layers.Dense(
        1, kernel_initializer="glorot_uniform", bias_initializer="zeros", name="linear"
    )(normalize(inputs))
    outputs = keras.layers.Rescaling(scale=y_std, offset=y_mean, name="denormalize")(z)
    return keras.Model(inputs, outputs, name="linear")


_ARCHITECTURES: dict[str, Callable[[TrainSpec, np.ndarray, np.ndarray], keras.Model]] = {
    "linear": _build_linear,
}


class _EpochEnd(keras.callbacks.Callback):  # type: ignore[misc]
    """Measures the validation loss after each epoch and reports it with the training loss.

    One graph call on tensors already in memory, where fit(validation_data=...) would build
    and tear down an evaluation pipeline every epoch (most of the run time on a model this
    small)."""

    def __init__(
        self,
        model: keras.Model,
        x_val: np.ndarray,
        y_val: np.ndarray,
        report: Callable[[int, Mapping[str, float]], None] | None,
    ) -> None:
        super().__init__()
        self._report = report
        self.last: dict[str, float] = {}
        self._val_loss: Callable[[], tf.Tensor] | None = None
        if len(x_val):
            x, y = tf.constant(x_val), tf.constant(y_val)
            self._val_loss = tf.function(
                lambda: tf.reduce_mean(tf.square(model(x, training=False) - y))
            )

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.last = {"loss": float((logs or {})["loss"])}
        if self._val_loss is not None:
            self.last["val_loss"] = float(self._val_loss())
        if self._report is not None:
            # 1-based so the last report reads "epoch 200" of 200.
            self._report(epoch + 1, dict(self.last))


class _Exported(tf.Module):  # type: ignore[misc]
    """What the SavedModel holds: the Keras model (its variables) and one serving function
    whose input and output keys are the names the protocol uses."""

    def __init__(self, model: keras.Model, input_name: str, output_name: str) -> None:
        super().__init__()
        self.model = model

        def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {output_name: model(x, training=False)}

        # The TensorSpec's name, not the Python argument's, becomes the signature's input key.
        self.serve = tf.function(
            serve, input_signature=[tf.TensorSpec([None, 1], tf.float32, name=input_name)]
        )


class _LoadedModel:
    """A loaded SavedModel version; concrete functions are safe to call from many threads."""

    def __init__(self, loaded: Any, function: Any) -> None:
        # The concrete function holds its variables weakly; `loaded` keeps them alive.
        self._loaded: Any = loaded
        self._function: Any = function
        _, kwargs = function.structured_input_signature
        self._input_dtypes: dict[str, tf.DType] = {name: s.dtype for name, s in kwargs.items()}
        self._expected = ", ".join(
            f"{name} {spec.dtype.name} {spec.shape.as_list()}" for name, spec in kwargs.items()
        )

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = self._function  # one read: close() may run concurrently
        if function is None:
            raise ModelNotReady("the model version was unloaded")
        missing = self._input_dtypes.keys() - inputs.keys()
        if missing:
            raise InvalidInput(f"missing model input(s): {', '.join(sorted(missing))}")
        try:
            outputs = function(
                **{
                    name: tf.constant(inputs[name], dtype)
                    for name, dtype in self._input_dtypes.items()
                }
            )
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as exc:
            # The core validates inputs first; this is the backstop for a caller that did not.
            raise InvalidInput(f"the model expects {self._expected}") from exc
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def close(self) -> None:
        self._function = None
        self._loaded = None


class TFBackend:
    framework = "tensorflow"
    platform = "tensorflow_savedmodel"

    def __init__(self, *, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        """Thread counts of 0 keep TensorFlow's defaults (one per core)."""
        if intra_op_threads < 0 or inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")
        try:
            if intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            if inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        except RuntimeError:
            # The pools are fixed once TF has run anything (e.g. a second backend instance).
            logger.warning(
                "TensorFlow is already initialised; keeping its thread pools "
                "(intra_op=%s, inter_op=%s)",
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            )

    def train(self, spec: TrainSpec, version_dir: Path) -> TrainResult:
        """Trains and writes `version_dir/model.savedmodel`. Reseeds Python's, NumPy's and
        TensorFlow's global generators, and runs one training at a time per process."""
        build = _ARCHITECTURES.get(spec.architecture)
        if build is None:
            raise InvalidInput(
                f"unknown architecture '{spec.architecture}' for TensorFlow; "
                f"supported: {', '.join(sorted(_ARCHITECTURES))}"
            )
        x, y = _check_spec(spec)
        # The last validation_split of the rows are held out, as Keras's validation_split
        # does; scaling statistics come from the training rows only.
        split = len(x) - int(len(x) * spec.validation_split)
        train, val = (x[:split], y[:split]), (x[split:], y[split:])
        with _TRAIN_LOCK:
            started = time.perf_counter()
            model, final = _fit(build, spec, train, val)
            seconds = time.perf_counter() - started
        metrics = _metrics(model, final, train, val)
        metrics["train_seconds"] = round(seconds, 3)
        logger.info("trained %s in %.1f s: %s", spec.architecture, seconds, metrics)

        exported = _Exported(model, spec.input_name, spec.output_name)
        tf.saved_model.save(
            exported,
            str(version_dir / SAVEDMODEL_DIR),
            signatures={_SERVING_KEY: exported.serve.get_concrete_function()},
        )
        signature = Signature(
            inputs=(TensorSpec(spec.input_name, "FP32", (-1, 1)),),
            outputs=(TensorSpec(spec.output_name, "FP32", (-1, 1)),),
        )
        return TrainResult(signature=signature, metrics=metrics)

    def load(self, version_dir: Path, architecture: str) -> Model:
        # `architecture` is not needed: a SavedModel carries its own graph.
        path = version_dir / SAVEDMODEL_DIR
        if not (path / "saved_model.pb").is_file():
            raise RepositoryError(f"{path} is not a TensorFlow SavedModel (no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # corrupt files surface as many TF and protobuf error types
            logger.warning("cannot load %s", path, exc_info=True)
            raise RepositoryError(
                f"cannot load the SavedModel in {path}: {type(exc).__name__}"
            ) from exc
        function = loaded.signatures.get(_SERVING_KEY)
        if function is None:
            raise RepositoryError(f"the SavedModel in {path} has no '{_SERVING_KEY}' signature")
        return _LoadedModel(loaded, function)


def _check_spec(spec: TrainSpec) -> tuple[np.ndarray, np.ndarray]:
    for name in (spec.input_name, spec.output_name):
        if not _TENSOR_NAME.match(name):
            raise InvalidInput(
                f"invalid tensor name '{name}' for TensorFlow: use letters, digits and '_', "
                "starting with a letter"
            )
    x = np.asarray(spec.x, dtype=np.float32)
    y = np.asarray(spec.y, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 1 or y.shape != x.shape:
        raise InvalidInput(f"x and y must both have shape [n, 1]; got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInput("x and y must be finite numbers")
    if not 0.0 <= spec.validation_split < 1.0:
        raise InvalidInput(f"validation_split must be in [0, 1); got {spec.validation_split}")
    if len(x) - int(len(x) * spec.validation_split) < 2:
        raise InvalidInput(f"{len(x)} examples leave fewer than 2 to train on")
    if spec.epochs < 1 or spec.batch_size < 1 or not spec.learning_rate > 0:
        raise InvalidInput("epochs, batch_size and learning_rate must be positive")
    return x, y


def _fit(
    build: Callable[[TrainSpec, np.ndarray, np.ndarray], keras.Model],
    spec: TrainSpec,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
) -> tuple[keras.Model, dict[str, float]]:
    x_train, y_train = train
    # Seeds Python, NumPy and TF, so initial weights follow from spec.seed; on CPU that makes
    # runs bit-identical without enable_op_determinism, a process-wide switch that would
    # also bind every model served here (and turns off XLA in Keras).
    keras.utils.set_random_seed(spec.seed)
    model = build(spec, x_train, y_train)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate), loss="mse")
    # One repeated dataset and steps_per_epoch keep a single iterator for the whole run:
    # fit() on arrays builds two input pipelines per epoch, which made 200 epochs of this
    # model take 20-30 s instead of about 2 s.
    batches = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=spec.seed)  # a new order every epoch
        .batch(spec.batch_size)
        .repeat()
    )
    epoch_end = _EpochEnd(model, *val, spec.on_epoch)
    model.fit(
        batches,
        epochs=spec.epochs,
        steps_per_epoch=math.ceil(len(x_train) / spec.batch_size),
        shuffle=False,  # the dataset shuffles; True would only make Keras warn
        verbose=0,
        callbacks=[epoch_end],
    )
    return model, epoch_end.last


def _metrics(
    model: keras.Model,
    final: dict[str, float],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    def predict(values: np.ndarray) -> np.ndarray:
        return np.asarray(model(values, training=False), dtype=np.float64)

    metrics = dict(final)
    # Without a validation split the RMSE falls back to the training rows (as TorchBackend).
    x_eval, y_eval = val if len(val[0]) else train
    metrics["rmse"] = math.sqrt(float(np.mean((predict(x_eval) - y_eval) ** 2)))
    x = np.concatenate([train[0], val[0]])
    # End-to-end slope and intercept in the caller's units, whatever scaling sits inside;
    # the widest span of the data keeps float32 rounding out of the slope.
    low, high = float(x.min()), float(x.max())
    high = high if high > low else low + 1.0
    at_low, at_high, at_zero = predict(np.array([[low], [high], [0.0]], dtype=np.float32))[:, 0]
    metrics["weight"] = float((at_high - at_low) / (high - low))
    metrics["bias"] = float(at_zero)
    return metrics
