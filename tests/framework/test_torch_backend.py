"""TorchBackend on the house_price linear model: train once, then serve from the saved files."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from serving.backend import TrainResult, TrainSpec
from serving.datasets import HOUSE_PRICE_INPUT, HOUSE_PRICE_OUTPUT, house_price
from serving.errors import BackendUnavailable, InvalidInput, RepositoryError
from torch_service import TorchBackend
from torch_service.backend import WEIGHTS_FILE

pytestmark = pytest.mark.framework


def _spec(**overrides: object) -> TrainSpec:
    x, y = house_price(256)
    fields: dict[str, object] = {
        "architecture": "linear",
        "x": x,
        "y": y,
        "input_name": HOUSE_PRICE_INPUT,
        "output_name": HOUSE_PRICE_OUTPUT,
        **overrides,
    }
    return TrainSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend()


@pytest.fixture(scope="module")
def trained(
    backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainResult]:
    version_dir = tmp_path_factory.mktemp("linear")
    return version_dir, backend.train(_spec(), version_dir)


def _predict(backend: TorchBackend, version_dir: Path, x: np.ndarray) -> np.ndarray:
    model = backend.load(version_dir, "linear")
    try:
        return model.predict({HOUSE_PRICE_INPUT: x})[HOUSE_PRICE_OUTPUT]
    finally:
        model.close()


def test_saved_model_predicts_price(
    backend: TorchBackend, trained: tuple[Path, TrainResult]
) -> None:
    version_dir, _ = trained
    price = _predict(backend, version_dir, np.array([[1800.0]], dtype=np.float32))
    assert price[0, 0] == pytest.approx(360.0, abs=1.0)


def test_metrics_report_the_learned_slope(trained: tuple[Path, TrainResult]) -> None:
    _, result = trained
    assert set(result.metrics) == {"loss", "val_loss", "rmse", "weight"}
    assert result.metrics["weight"] == pytest.approx(0.2, abs=0.01)
    assert result.metrics["rmse"] < 1.0


def test_signature_uses_the_spec_names(trained: tuple[Path, TrainResult]) -> None:
    _, result = trained
    assert [(s.name, s.datatype, s.shape) for s in result.signature.inputs] == [
        (HOUSE_PRICE_INPUT, "FP32", (-1, 1))
    ]
    assert [s.name for s in result.signature.outputs] == [HOUSE_PRICE_OUTPUT]


def test_same_seed_gives_identical_model(
    backend: TorchBackend, trained: tuple[Path, TrainResult], tmp_path: Path
) -> None:
    first_dir, first = trained
    second = backend.train(_spec(), tmp_path)
    x = house_price(64, seed=1)[0]
    np.testing.assert_array_equal(_predict(backend, first_dir, x), _predict(backend, tmp_path, x))
    assert first.metrics == second.metrics
    a = torch.load(first_dir / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(backend: TorchBackend, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backend.train(_spec(epochs=1, seed=0), tmp_path / "a")
    backend.train(_spec(epochs=1, seed=1), tmp_path / "b")
    a = torch.load(tmp_path / "a" / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / "b" / WEIGHTS_FILE, weights_only=True)
    assert not torch.equal(a["linear.weight"], b["linear.weight"])


def test_on_epoch_reports_every_epoch(backend: TorchBackend, tmp_path: Path) -> None:
    seen: list[tuple[int, set[str]]] = []
    backend.train(_spec(epochs=3, on_epoch=lambda e, m: seen.append((e, set(m)))), tmp_path)
    assert seen == [(e, {"loss", "val_loss"}) for e in (1, 2, 3)]


def test_batch_keeps_shape_and_dtype(
    backend: TorchBackend, trained: tuple[Path, TrainResult]
) -> None:
    version_dir, _ = trained
    out = _predict(backend, version_dir, np.linspace(500, 2500, 5).reshape(5, 1))
    assert out.shape == (5, 1)
    assert out.dtype == np.float32


def test_read_only_input_is_accepted(
    backend: TorchBackend, trained: tuple[Path, TrainResult]
) -> None:
    # The codec decodes raw contents with np.frombuffer, which is read-only; torch warns on
    # those and warnings are errors here.
    x = np.frombuffer(np.float32(1800.0).tobytes(), dtype=np.float32).reshape(1, 1)
    assert _predict(backend, trained[0], x)[0, 0] == pytest.approx(360.0, abs=1.0)


def test_predict_from_many_threads(
    backend: TorchBackend, trained: tuple[Path, TrainResult]
) -> None:
    model = backend.load(trained[0], "linear")
    inputs = [np.full((i % 7 + 1, 1), 500.0 + i, dtype=np.float32) for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda x: model.predict({HOUSE_PRICE_INPUT: x}), inputs))
    model.close()
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out[HOUSE_PRICE_OUTPUT], 0.2 * x, atol=0.01)


def test_unknown_architecture_is_invalid_input(backend: TorchBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="linear"):
        backend.train(_spec(architecture="transformer"), tmp_path)


def test_loading_an_empty_directory_fails(backend: TorchBackend, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"torch_config\.json"):
        backend.load(tmp_path, "linear")


def test_loading_corrupt_weights_fails(
    backend: TorchBackend, trained: tuple[Path, TrainResult], tmp_path: Path
) -> None:
    version_dir = tmp_path / "version"
    shutil.copytree(trained[0], version_dir)
    (version_dir / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RepositoryError, match="state_dict"):
        backend.load(version_dir, "linear")


def test_loading_under_another_architecture_fails(
    backend: TorchBackend, trained: tuple[Path, TrainResult]
) -> None:
    with pytest.raises(RepositoryError, match="architecture"):
        backend.load(trained[0], "mlp")


def test_cuda_without_a_gpu_is_unavailable() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendUnavailable, match="no CUDA device is available"):
        TorchBackend(device="cuda")


def test_malformed_device_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        TorchBackend(device="gpu0")
