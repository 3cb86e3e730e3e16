"""TorchBackend on the three shared architectures: each trained once per module on its
built-in dataset with the architecture's defaults, then served from the saved files."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serving.backend import EPOCH_METRICS, TrainResult, TrainSpec
from serving.backend.architectures import ARCHITECTURES, signature_for
from serving.errors import BackendUnavailable, InvalidInput, RepositoryError
from serving.training.datasets import Dataset, load_builtin, validation_split
from torch_service import TorchBackend
from torch_service.backend import CONFIG_FILE, WEIGHTS_FILE

pytestmark = pytest.mark.framework

DATASETS = {"linear": "house_price", "mlp": "house_features", "cnn": "digits"}


@cache
def _dataset(architecture: str) -> Dataset:
    return load_builtin(DATASETS[architecture])


def _spec(architecture: str, **overrides: Any) -> TrainSpec:
    """The architecture's defaults on 80 % of its dataset's training rows."""
    data, arch = _dataset(architecture), ARCHITECTURES[architecture]
    x, y, x_val, y_val = validation_split(data.x_train, data.y_train, 0.2, seed=0)
    fields: dict[str, Any] = {
        "architecture": architecture,
        "x": x,
        "y": y,
        "x_val": x_val,
        "y_val": y_val,
        "input_name": data.input_name,
        "output_name": data.output_name,
        "task": data.task,
        "num_classes": data.num_classes,
        "epochs": arch.epochs,
        "batch_size": arch.batch_size,
        "learning_rate": arch.learning_rate,
        **overrides,
    }
    return TrainSpec(**fields)


@dataclass
class Trained:
    architecture: str
    version_dir: Path
    result: TrainResult
    epochs: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def _train(
    backend: TorchBackend, architecture: str, version_dir: Path, **overrides: Any
) -> Trained:
    epochs: list[tuple[int, dict[str, float]]] = []

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        epochs.append((epoch, dict(metrics)))

    spec = _spec(architecture, on_epoch=on_epoch, **overrides)
    return Trained(architecture, version_dir, backend.train(spec, version_dir), epochs)


def _predict(backend: TorchBackend, trained: Trained, x: np.ndarray) -> np.ndarray:
    data = _dataset(trained.architecture)
    model = backend.load(trained.version_dir, trained.architecture)
    try:
        return model.predict({data.input_name: x})[data.output_name]
    finally:
        model.close()


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend()


@pytest.fixture(scope="module")
def linear(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(backend, "linear", tmp_path_factory.mktemp("linear"))


@pytest.fixture(scope="module")
def mlp(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(backend, "mlp", tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def cnn(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(backend, "cnn", tmp_path_factory.mktemp("cnn"))


@pytest.fixture(params=["linear", "mlp", "cnn"])
def trained(request: pytest.FixtureRequest) -> Trained:
    result: Trained = request.getfixturevalue(request.param)
    return result


# Quality on the held-out test split.


def test_linear_predicts_price(backend: TorchBackend, linear: Trained) -> None:
    price = _predict(backend, linear, np.array([[1800.0]], dtype=np.float32))
    assert price[0, 0] == pytest.approx(360.0, abs=1.0)


def test_mlp_test_rmse_is_near_the_noise_floor(backend: TorchBackend, mlp: Trained) -> None:
    data = _dataset("mlp")
    rmse = math.sqrt(float(np.mean((_predict(backend, mlp, data.x_test) - data.y_test) ** 2)))
    assert rmse < 12.0  # the generator's noise alone gives 8


def test_cnn_test_accuracy(backend: TorchBackend, cnn: Trained) -> None:
    data = _dataset("cnn")
    probabilities = _predict(backend, cnn, data.x_test)
    assert float((probabilities.argmax(axis=1) == data.y_test).mean()) >= 0.95


def test_cnn_serves_probabilities(backend: TorchBackend, cnn: Trained) -> None:
    probabilities = _predict(backend, cnn, _dataset("cnn").x_test[:5])
    assert probabilities.shape == (5, 10)
    assert probabilities.dtype == np.float32
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# What training reports.


def test_signature_is_the_shared_one(trained: Trained) -> None:
    data = _dataset(trained.architecture)
    spec = _spec(trained.architecture)
    assert trained.result.signature == signature_for(
        ARCHITECTURES[trained.architecture],
        spec.x,
        data.input_name,
        data.output_name,
        data.num_classes,
    )


def test_on_epoch_reports_every_epoch(trained: Trained) -> None:
    epochs = ARCHITECTURES[trained.architecture].epochs
    assert [e for e, _ in trained.epochs] == list(range(1, epochs + 1))
    assert all(set(metrics) == set(EPOCH_METRICS) for _, metrics in trained.epochs)


def test_result_metrics_are_the_last_epoch(trained: Trained) -> None:
    metrics = dict(trained.result.metrics)
    assert metrics.pop("train_seconds") > 0
    assert metrics == trained.epochs[-1][1]


def test_regression_loss_is_in_normalised_units(linear: Trained, mlp: Trained) -> None:
    # Raw squared errors would be in the hundreds (mlp) or far above 0.01 (linear).
    assert linear.epochs[-1][1]["loss"] < 0.01
    assert mlp.epochs[-1][1]["loss"] < 0.05
    # val_metric is an RMSE in thousands, consistent with the normalised val_loss.
    assert mlp.epochs[-1][1]["val_metric"] < 15.0
    y_std = float(np.std(_spec("mlp").y))
    final = mlp.epochs[-1][1]
    assert final["val_metric"] == pytest.approx(math.sqrt(final["val_loss"]) * y_std, rel=1e-3)


def test_classification_metrics(cnn: Trained) -> None:
    final = cnn.epochs[-1][1]
    assert 0.95 <= final["val_metric"] <= 1.0  # accuracy
    assert 0 < final["loss"] < 0.5  # cross-entropy; 10 equal guesses would give 2.3


def test_no_validation_rows_means_no_val_metrics(backend: TorchBackend, tmp_path: Path) -> None:
    spec = _spec("linear")
    trained = _train(backend, "linear", tmp_path, epochs=2, x_val=spec.x[:0], y_val=spec.y[:0])
    assert [(e, set(metrics)) for e, metrics in trained.epochs] == [(1, {"loss"}), (2, {"loss"})]
    assert set(trained.result.metrics) == {"loss", "train_seconds"}


class _Cancelled(Exception):
    pass


def test_exception_from_on_epoch_stops_training(backend: TorchBackend, tmp_path: Path) -> None:
    seen: list[int] = []

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise _Cancelled("stop")

    with pytest.raises(_Cancelled, match="stop"):
        backend.train(_spec("linear", on_epoch=on_epoch), tmp_path)
    assert seen == [1, 2]
    assert list(tmp_path.iterdir()) == []


# Determinism and hyper-parameters.


@pytest.mark.parametrize("architecture", ["linear", "mlp"])
def test_same_seed_gives_identical_predictions(
    backend: TorchBackend, architecture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    first: Trained = request.getfixturevalue(architecture)
    second = _train(backend, architecture, tmp_path)
    x = _dataset(architecture).x_test
    np.testing.assert_array_equal(_predict(backend, first, x), _predict(backend, second, x))
    assert first.epochs == second.epochs
    a = torch.load(first.version_dir / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(backend: TorchBackend, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backend.train(_spec("linear", epochs=1, seed=0), tmp_path / "a")
    backend.train(_spec("linear", epochs=1, seed=1), tmp_path / "b")
    a = torch.load(tmp_path / "a" / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / "b" / WEIGHTS_FILE, weights_only=True)
    assert not torch.equal(a["body.weight"], b["body.weight"])


def test_sgd_trains_linear(backend: TorchBackend, tmp_path: Path) -> None:
    trained = _train(backend, "linear", tmp_path, optimizer="sgd", epochs=50)
    price = _predict(backend, trained, np.array([[1800.0]], dtype=np.float32))
    assert price[0, 0] == pytest.approx(360.0, abs=1.0)


# Serving.


def test_batch_keeps_shape_and_dtype(backend: TorchBackend, linear: Trained) -> None:
    out = _predict(backend, linear, np.linspace(500, 2500, 5).reshape(5, 1))
    assert out.shape == (5, 1)
    assert out.dtype == np.float32


def test_read_only_input_is_accepted(backend: TorchBackend, linear: Trained) -> None:
    # The codec decodes raw contents with np.frombuffer, which is read-only; torch warns on
    # those and warnings are errors here.
    x = np.frombuffer(np.float32(1800.0).tobytes(), dtype=np.float32).reshape(1, 1)
    assert _predict(backend, linear, x)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_predict_from_many_threads(backend: TorchBackend, linear: Trained) -> None:
    data = _dataset("linear")
    model = backend.load(linear.version_dir, "linear")
    inputs = [np.full((i % 7 + 1, 1), 500.0 + i, dtype=np.float32) for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda x: model.predict({data.input_name: x}), inputs))
    model.close()
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out[data.output_name], 0.2 * x, atol=0.01)


def test_config_holds_the_constructor_arguments(cnn: Trained, mlp: Trained) -> None:
    assert json.loads((cnn.version_dir / CONFIG_FILE).read_text())["kwargs"] == {
        "height": 8,
        "width": 8,
        "channels": 1,
        "classes": 10,
    }
    assert json.loads((mlp.version_dir / CONFIG_FILE).read_text())["kwargs"] == {"features": 6}


def test_linear_config_without_kwargs_still_loads(
    backend: TorchBackend, linear: Trained, tmp_path: Path
) -> None:
    # Versions saved before the architectures took arguments wrote "kwargs": {}.
    version_dir = tmp_path / "version"
    shutil.copytree(linear.version_dir, version_dir)
    config = json.loads((version_dir / CONFIG_FILE).read_text())
    (version_dir / CONFIG_FILE).write_text(json.dumps({**config, "kwargs": {}}))
    old = Trained("linear", version_dir, linear.result)
    price = _predict(backend, old, np.array([[1800.0]], dtype=np.float32))
    assert price[0, 0] == pytest.approx(360.0, abs=1.0)


# Errors.


def test_unknown_architecture_is_invalid_input(backend: TorchBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="linear"):
        backend.train(replace(_spec("linear"), architecture="transformer"), tmp_path)


def test_loading_an_empty_directory_fails(backend: TorchBackend, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"torch_config\.json"):
        backend.load(tmp_path, "linear")


def test_loading_corrupt_weights_fails(
    backend: TorchBackend, linear: Trained, tmp_path: Path
) -> None:
    version_dir = tmp_path / "version"
    shutil.copytree(linear.version_dir, version_dir)
    (version_dir / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RepositoryError, match="state_dict"):
        backend.load(version_dir, "linear")


def test_loading_under_another_architecture_fails(backend: TorchBackend, linear: Trained) -> None:
    with pytest.raises(RepositoryError, match="architecture"):
        backend.load(linear.version_dir, "mlp")


def test_cuda_without_a_gpu_is_unavailable() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendUnavailable, match="no CUDA device is available"):
        TorchBackend(device="cuda")


def test_training_on_cuda_without_a_gpu_is_unavailable(
    backend: TorchBackend, tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    seen: list[int] = []
    spec = _spec("linear", device="cuda", on_epoch=lambda epoch, _: seen.append(epoch))
    with pytest.raises(BackendUnavailable, match="no CUDA device is available"):
        backend.train(spec, tmp_path)
    assert seen == []  # refused before the first epoch


def test_malformed_device_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        TorchBackend(device="gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_and_saves_cpu_weights(backend: TorchBackend, tmp_path: Path) -> None:
    trained = _train(backend, "cnn", tmp_path, device="cuda")
    weights = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(t.device.type == "cpu" for t in weights.values())
    data = _dataset("cnn")
    probabilities = _predict(backend, trained, data.x_test)  # served on the CPU backend
    assert float((probabilities.argmax(axis=1) == data.y_test).mean()) >= 0.95
