"""TFBackend on the three shared architectures, each trained once per module on its built-in
dataset with the architecture's defaults and served from the saved files."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend import EPOCH_METRICS, Model, TrainResult, TrainSpec
from serving.backend.architectures import get, signature_for
from serving.errors import BackendUnavailable, InvalidInput, ModelNotReady, RepositoryError
from serving.training.datasets import Dataset, load_builtin, validation_split

pytest.importorskip("tensorflow")

# Imported only once TensorFlow is known to be installed.
import tensorflow as tf

from tf_service import TFBackend

pytestmark = pytest.mark.framework

DATASETS = {"linear": "house_price", "mlp": "house_features", "cnn": "digits"}


@functools.cache
def _dataset(name: str) -> Dataset:
    return load_builtin(name)


def _spec(architecture: str, **overrides: Any) -> TrainSpec:
    """The architecture's defaults on its dataset, 20 % of the training rows for validation."""
    data, defaults = _dataset(DATASETS[architecture]), get(architecture)
    x, y, x_val, y_val = validation_split(data.x_train, data.y_train, 0.2, seed=0)
    spec = TrainSpec(
        architecture,
        x,
        y,
        x_val,
        y_val,
        input_name=data.input_name,
        output_name=data.output_name,
        task=data.task,
        num_classes=data.num_classes,
        epochs=defaults.epochs,
        batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate,
    )
    return replace(spec, **overrides)


@dataclass
class Run:
    """One training: its spec, where it was saved, what it returned and reported."""

    spec: TrainSpec
    path: Path
    result: TrainResult
    reports: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def predict(self, model: Model, x: np.ndarray) -> np.ndarray:
        return model.predict({self.spec.input_name: x})[self.spec.output_name]


def _train(backend: TFBackend, path: Path, architecture: str, **overrides: Any) -> Run:
    reports: list[tuple[int, dict[str, float]]] = []
    spec = _spec(architecture, on_epoch=lambda e, m: reports.append((e, dict(m))), **overrides)
    return Run(spec, path, backend.train(spec, path), reports)


def _loaded(backend: TFBackend, run: Run) -> Iterator[Model]:
    model = backend.load(run.path, run.spec.architecture)
    yield model
    model.close()


@pytest.fixture(scope="module")
def backend() -> TFBackend:
    return TFBackend()


@pytest.fixture(scope="module")
def linear(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(backend, tmp_path_factory.mktemp("tf-linear"), "linear")


@pytest.fixture(scope="module")
def mlp(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(backend, tmp_path_factory.mktemp("tf-mlp"), "mlp")


@pytest.fixture(scope="module")
def cnn(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(backend, tmp_path_factory.mktemp("tf-cnn"), "cnn")


@pytest.fixture(scope="module")
def linear_model(backend: TFBackend, linear: Run) -> Iterator[Model]:
    yield from _loaded(backend, linear)


@pytest.fixture(scope="module")
def mlp_model(backend: TFBackend, mlp: Run) -> Iterator[Model]:
    yield from _loaded(backend, mlp)


@pytest.fixture(scope="module")
def cnn_model(backend: TFBackend, cnn: Run) -> Iterator[Model]:
    yield from _loaded(backend, cnn)


@pytest.fixture(params=["linear", "mlp", "cnn"])
def run(request: pytest.FixtureRequest) -> Run:
    result: Run = request.getfixturevalue(request.param)
    return result


def _sizes(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


# --- linear: house price from size ------------------------------------------------------------


def test_learns_price_from_size(linear: Run, linear_model: Model) -> None:
    assert linear.predict(linear_model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)


def test_linear_metrics_are_the_epoch_metrics(linear: Run) -> None:
    metrics = linear.result.metrics
    assert set(metrics) == {*EPOCH_METRICS, "train_seconds"}
    # loss and val_loss are MSE of the normalised target, val_metric RMSE in thousands.
    assert metrics["loss"] < 0.01
    assert metrics["val_loss"] < 0.01
    assert metrics["val_metric"] < 1.0


def test_predicts_a_batch(linear: Run, linear_model: Model) -> None:
    sizes = [500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    out = linear.predict(linear_model, _sizes(sizes))
    assert out.shape == (5, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.2 * s for s in sizes], atol=1.0)


def test_predict_from_many_threads(linear: Run, linear_model: Model) -> None:
    sizes = [float(s) for s in range(500, 2750, 25)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda s: linear.predict(linear_model, _sizes([s]))[0, 0], sizes * 4))
    np.testing.assert_allclose(outs, [0.2 * s for s in sizes * 4], atol=1.0)


def test_sgd_trains_linear(backend: TFBackend, tmp_path: Path) -> None:
    sgd = _train(backend, tmp_path, "linear", optimizer="sgd", epochs=50)
    model = backend.load(tmp_path, "linear")
    assert sgd.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    assert sgd.result.metrics["loss"] < 0.01
    model.close()


# --- mlp: house price from six features -------------------------------------------------------


def test_mlp_beats_the_rmse_bar(
    mlp: Run, mlp_model: Model, record_property: Callable[[str, object], None]
) -> None:
    data = _dataset("house_features")
    error = mlp.predict(mlp_model, data.x_test).astype(np.float64) - data.y_test
    rmse = math.sqrt(float(np.mean(error**2)))
    seconds = mlp.result.metrics["train_seconds"]
    record_property("test_rmse", rmse)
    record_property("train_seconds", seconds)
    print(f"tf mlp: held-out RMSE {rmse:.2f} (noise floor 8), trained in {seconds:.1f} s")
    assert rmse < 12.0


def test_regression_loss_is_normalised_and_metric_in_target_units(mlp: Run) -> None:
    metrics = mlp.result.metrics
    y_std = float(np.std(mlp.spec.y))
    # RMSE in thousands = std of the training target x sqrt(MSE of the normalised target).
    assert metrics["val_metric"] == pytest.approx(y_std * math.sqrt(metrics["val_loss"]), rel=1e-3)
    assert metrics["loss"] < 0.05  # about (10 / 159)^2; in price units it would be ~100


# --- cnn: digits ------------------------------------------------------------------------------


def test_cnn_classifies_held_out_digits(
    cnn: Run, cnn_model: Model, record_property: Callable[[str, object], None]
) -> None:
    data = _dataset("digits")
    probabilities = cnn.predict(cnn_model, data.x_test)
    assert probabilities.shape == (len(data.x_test), 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == data.y_test))
    seconds = cnn.result.metrics["train_seconds"]
    record_property("test_accuracy", accuracy)
    record_property("train_seconds", seconds)
    print(f"tf cnn: held-out accuracy {accuracy:.4f}, trained in {seconds:.1f} s")
    assert accuracy >= 0.95


def test_classification_metrics(cnn: Run) -> None:
    metrics = cnn.result.metrics
    assert set(metrics) == {*EPOCH_METRICS, "train_seconds"}
    assert 0.9 <= metrics["val_metric"] <= 1.0  # accuracy
    assert 0.0 < metrics["loss"] < 0.5  # cross-entropy, from about ln(10) at the start
    assert cnn.reports[0][1]["loss"] > metrics["loss"]


# oneDNN's convolution (TensorFlow's default on Intel CPUs) aborts the process on a wrong rank
# instead of raising: the backend must refuse these before TensorFlow sees them, whoever calls
# it. `make test` runs this module under TF_ENABLE_ONEDNN_OPTS=0 and =1.
@pytest.mark.parametrize(
    "image",
    [
        np.zeros((2, 64), np.float32),  # flat rows: rank 2
        np.zeros((2, 8, 8), np.float32),  # rank 3
        np.zeros((2, 8, 8, 1, 1), np.float32),  # rank 5
        np.zeros((8, 8, 1), np.float32),  # one image without its batch dimension
        np.zeros((2, 8, 8, 3), np.float32),  # colour
        np.zeros((2, 4, 4, 1), np.float32),  # smaller images
    ],
    ids=["rank2", "rank3", "rank5", "unbatched", "channels", "size"],
)
def test_cnn_rejects_inputs_its_signature_does_not_declare(
    cnn_model: Model, image: np.ndarray
) -> None:
    with pytest.raises(InvalidInput, match=r"\[None, 8, 8, 1\]"):
        cnn_model.predict({"image": image})


def test_cnn_rejects_a_datatype_that_does_not_cast(cnn_model: Model) -> None:
    with pytest.raises(InvalidInput, match="must be float32"):
        cnn_model.predict({"image": np.full((1, 8, 8, 1), b"x", dtype=object)})


def test_cnn_refusals_keep_it_serving(cnn_model: Model) -> None:
    for bad in (np.zeros((2, 64), np.float32), np.zeros((1, 8, 8, 2), np.float32)):
        with pytest.raises(InvalidInput):
            cnn_model.predict({"image": bad})
    out = cnn_model.predict({"image": np.zeros((3, 8, 8, 1), np.float32)})
    assert next(iter(out.values())).shape == (3, 10)


# --- every architecture -----------------------------------------------------------------------


def test_signature_is_the_shared_one(run: Run) -> None:
    spec = run.spec
    expected = signature_for(
        get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
    )
    assert run.result.signature == expected


def test_reports_every_epoch(run: Run) -> None:
    assert [epoch for epoch, _ in run.reports] == list(range(1, run.spec.epochs + 1))
    assert all(set(metrics) == set(EPOCH_METRICS) for _, metrics in run.reports)
    assert all(math.isfinite(value) for _, m in run.reports for value in m.values())
    final = run.reports[-1][1]
    assert {key: run.result.metrics[key] for key in EPOCH_METRICS} == final


@pytest.mark.parametrize("architecture", ["linear", "mlp"])
def test_same_seed_gives_the_same_model(
    backend: TFBackend, architecture: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    first: Run = request.getfixturevalue(architecture)
    second = _train(backend, tmp_path, architecture)
    x = _dataset(DATASETS[architecture]).x_test
    predictions = []
    for trained in (first, second):
        model = backend.load(trained.path, architecture)
        predictions.append(trained.predict(model, x))
        model.close()
    np.testing.assert_array_equal(predictions[0], predictions[1])
    assert second.reports == first.reports


def test_no_validation_rows_means_no_val_metrics(backend: TFBackend, tmp_path: Path) -> None:
    spec = _spec("linear")
    run = _train(backend, tmp_path, "linear", x_val=spec.x_val[:0], y_val=spec.y_val[:0], epochs=3)
    assert [epoch for epoch, _ in run.reports] == [1, 2, 3]
    assert all(set(metrics) == {"loss"} for _, metrics in run.reports)
    assert not {"val_loss", "val_metric"} & run.result.metrics.keys()


class _Cancelled(Exception):
    pass


def test_exception_from_on_epoch_stops_training(backend: TFBackend, tmp_path: Path) -> None:
    seen: list[int] = []
    cancelled = _Cancelled("stop at epoch 2")

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise cancelled

    with pytest.raises(_Cancelled) as raised:
        backend.train(_spec("mlp", on_epoch=on_epoch), tmp_path)
    assert raised.value is cancelled
    assert seen == [1, 2]
    assert not any(tmp_path.iterdir())  # nothing saved


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU here"
)
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu"])
def test_gpu_without_a_gpu_is_backend_unavailable(
    backend: TFBackend, device: str, tmp_path: Path
) -> None:
    seen: list[int] = []
    spec = _spec("linear", device=device, on_epoch=lambda e, m: seen.append(e))
    with pytest.raises(BackendUnavailable, match=f"device '{device}' requested"):
        backend.train(spec, tmp_path)
    assert seen == []


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CUDA"])
def test_unknown_device_is_invalid_input(backend: TFBackend, device: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        backend.train(_spec("linear", device=device), tmp_path)


def test_cpu_device_trains(backend: TFBackend, tmp_path: Path) -> None:
    run = _train(backend, tmp_path, "linear", device="cpu", epochs=2)
    assert [epoch for epoch, _ in run.reports] == [1, 2]


# --- errors -----------------------------------------------------------------------------------


def test_unknown_architecture_is_invalid_input(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="supported: cnn, linear, mlp"):
        backend.train(replace(_spec("linear"), architecture="transformer"), tmp_path)


def test_names_a_savedmodel_would_rewrite_are_invalid(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="size-sqft"):
        backend.train(_spec("linear", input_name="size-sqft"), tmp_path)


def test_empty_directory_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no saved_model\.pb"):
        backend.load(tmp_path, "linear")


def test_corrupt_savedmodel_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    (tmp_path / "model.savedmodel").mkdir()
    (tmp_path / "model.savedmodel" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RepositoryError, match="cannot load"):
        backend.load(tmp_path, "linear")


def test_closed_model_is_not_ready(backend: TFBackend, linear: Run) -> None:
    loaded = backend.load(linear.path, "linear")
    loaded.close()
    with pytest.raises(ModelNotReady):
        linear.predict(loaded, _sizes([1800.0]))
