"""TFBackend on the house-price model: trained once per module, served from the saved files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend import Model, TrainResult, TrainSpec
from serving.datasets import HOUSE_PRICE_INPUT, HOUSE_PRICE_OUTPUT, house_price
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from serving.types import Signature, TensorSpec

pytest.importorskip("tensorflow")

# Imported only once TensorFlow is known to be installed.
from tf_service import TFBackend

pytestmark = pytest.mark.framework


def _spec(**overrides: Any) -> TrainSpec:
    x, y = house_price(256)
    spec = TrainSpec("linear", x, y, input_name=HOUSE_PRICE_INPUT, output_name=HOUSE_PRICE_OUTPUT)
    return replace(spec, **overrides)


def _predict(model: Model, sizes: list[float]) -> np.ndarray:
    inputs = {HOUSE_PRICE_INPUT: np.array(sizes, dtype=np.float32).reshape(-1, 1)}
    return model.predict(inputs)[HOUSE_PRICE_OUTPUT]


@pytest.fixture(scope="module")
def backend() -> TFBackend:
    return TFBackend()


@pytest.fixture(scope="module")
def trained(
    backend: TFBackend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainResult]:
    version_dir = tmp_path_factory.mktemp("tf-linear")
    return version_dir, backend.train(_spec(), version_dir)


@pytest.fixture(scope="module")
def model(backend: TFBackend, trained: tuple[Path, TrainResult]) -> Iterator[Model]:
    loaded = backend.load(trained[0], "linear")
    yield loaded
    loaded.close()


def test_learns_price_from_size(model: Model) -> None:
    assert _predict(model, [1800.0])[0, 0] == pytest.approx(360.0, abs=1.0)


def test_metrics_show_the_learned_slope(trained: tuple[Path, TrainResult]) -> None:
    metrics = trained[1].metrics
    assert metrics["weight"] == pytest.approx(0.2, abs=0.01)
    assert metrics["rmse"] < 1.0
    assert {"loss", "val_loss"} <= metrics.keys()


def test_signature_uses_the_spec_names(trained: tuple[Path, TrainResult]) -> None:
    assert trained[1].signature == Signature(
        inputs=(TensorSpec(HOUSE_PRICE_INPUT, "FP32", (-1, 1)),),
        outputs=(TensorSpec(HOUSE_PRICE_OUTPUT, "FP32", (-1, 1)),),
    )


def test_predicts_a_batch(model: Model) -> None:
    sizes = [500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    out = _predict(model, sizes)
    assert out.shape == (5, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.2 * s for s in sizes], atol=1.0)


def test_same_seed_gives_the_same_model(backend: TFBackend, model: Model, tmp_path: Path) -> None:
    backend.train(_spec(), tmp_path)
    again = backend.load(tmp_path, "linear")
    sizes = [500.0, 1234.5, 1800.0, 2750.0]
    np.testing.assert_array_equal(_predict(again, sizes), _predict(model, sizes))
    again.close()


def test_reports_every_epoch(backend: TFBackend, tmp_path: Path) -> None:
    seen: list[tuple[int, Mapping[str, float]]] = []
    backend.train(_spec(epochs=3, on_epoch=lambda e, m: seen.append((e, m))), tmp_path)
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert all({"loss", "val_loss"} <= metrics.keys() for _, metrics in seen)


def test_predict_from_many_threads(model: Model) -> None:
    sizes = [float(s) for s in range(500, 2750, 25)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outs = list(pool.map(lambda s: _predict(model, [s])[0, 0], sizes * 4))
    np.testing.assert_allclose(outs, [0.2 * s for s in sizes * 4], atol=1.0)


def test_unknown_architecture_is_invalid_input(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="supported: linear"):
        backend.train(_spec(architecture="transformer"), tmp_path)


def test_empty_directory_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no saved_model\.pb"):
        backend.load(tmp_path, "linear")


def test_corrupt_savedmodel_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    (tmp_path / "model.savedmodel").mkdir()
    (tmp_path / "model.savedmodel" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RepositoryError, match="cannot load"):
        backend.load(tmp_path, "linear")


def test_closed_model_is_not_ready(backend: TFBackend, trained: tuple[Path, TrainResult]) -> None:
    loaded = backend.load(trained[0], "linear")
    loaded.close()
    with pytest.raises(ModelNotReady):
        _predict(loaded, [1800.0])


def test_names_a_savedmodel_would_rewrite_are_invalid(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="size-sqft"):
        backend.train(_spec(input_name="size-sqft"), tmp_path)
