"""What only TFBackend has, beyond the contract every backend meets
(`tests/framework/conformance/`): the guard in front of oneDNN, SavedModel's naming rules and
files, the TFLite interpreter's own checks, TensorFlow's GPU devices. The models are the
session's (`tests/framework/backends.py`), trained once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serving.backend import Model
from serving.errors import BackendUnavailable, InvalidInput, RepositoryError
from tests.framework.backends import Version, Versions, spec_for

pytest.importorskip("tensorflow")

# Imported only once TensorFlow is known to be installed.
import tensorflow as tf

from tf_service import TFBackend

pytestmark = pytest.mark.framework


@pytest.fixture(scope="module")
def backend(versions: Versions) -> TFBackend:
    backend = versions.backend("tensorflow")
    assert isinstance(backend, TFBackend)
    return backend


@pytest.fixture(scope="module")
def cnn_model(versions: Versions, backend: TFBackend) -> Iterator[Model]:
    model = backend.load(versions.get("tensorflow", "cnn").path, "cnn")
    yield model
    model.close()


@pytest.fixture(scope="module")
def linear(versions: Versions) -> Version:
    return versions.get("tensorflow", "linear")


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


def test_tflite_rejects_wrong_shapes_and_missing_inputs(
    backend: TFBackend, linear: Version
) -> None:
    model = backend.load(linear.path, "linear", "tflite")
    with pytest.raises(InvalidInput, match=r"size_sqft float32 \[None, 1\], got \[2, 3\]"):
        model.predict({"size_sqft": np.zeros((2, 3), np.float32)})
    with pytest.raises(InvalidInput, match="got \\[2\\]"):
        model.predict({"size_sqft": np.zeros(2, np.float32)})
    with pytest.raises(InvalidInput, match="missing model input"):
        model.predict({"size": np.zeros((1, 1), np.float32)})
    model.close()


def test_names_a_savedmodel_would_rewrite_are_invalid(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="size-sqft"):
        backend.train(spec_for("linear", input_name="size-sqft"), tmp_path)


def test_unknown_architecture_names_the_supported_ones(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="supported: cnn, linear, mlp"):
        backend.train(replace(spec_for("linear"), architecture="transformer"), tmp_path)


def test_corrupt_savedmodel_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    (tmp_path / "model.savedmodel").mkdir()
    (tmp_path / "model.savedmodel" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(RepositoryError, match="cannot load"):
        backend.load(tmp_path, "linear")


@pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU here"
)
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu"])
def test_gpu_without_a_gpu_is_backend_unavailable(
    backend: TFBackend, device: str, tmp_path: Path
) -> None:
    seen: list[int] = []
    spec = spec_for("linear", device=device, on_epoch=lambda e, m: seen.append(e))
    with pytest.raises(BackendUnavailable, match=f"device '{device}' requested"):
        backend.train(spec, tmp_path)
    assert seen == []
