"""TFBackend's exports: TFLite (served by the backend) and ONNX (served by the core's
OnnxModel), each checked against the native SavedModel on held-out inputs, for every
architecture trained once per module."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from serving.backend import Model
from serving.backend.architectures import get, signature_for
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import VersionMeta
from serving.engine.runtimes import export_runtimes
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from tests.framework.exports import ARCHITECTURES, Exported, dataset, train_and_export

pytest.importorskip("tensorflow")

# Imported only once TensorFlow is known to be installed.
from tf_service import TFBackend

pytestmark = pytest.mark.framework

EXPORTED = ["tflite", "onnx"]


def _train_and_export(backend: TFBackend, path: Path, architecture: str) -> Exported:
    return train_and_export(backend, path, architecture, EXPORTED)


@pytest.fixture(scope="module")
def backend() -> TFBackend:
    return TFBackend()


@pytest.fixture(scope="module")
def linear(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("tf-linear"), "linear")


@pytest.fixture(scope="module")
def mlp(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("tf-mlp"), "mlp")


@pytest.fixture(scope="module")
def cnn(backend: TFBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("tf-cnn"), "cnn")


@pytest.fixture(params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest) -> Exported:
    result: Exported = request.getfixturevalue(request.param)
    return result


@pytest.fixture
def linear_tflite(backend: TFBackend, linear: Exported) -> Iterator[Model]:
    model = backend.load(linear.path, "linear", "tflite")
    yield model
    model.close()


def _sizes(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def _native_and(
    backend: TFBackend, exported: Exported, runtime: str, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    answers = []
    for name in ("native", runtime):
        model = exported.load(backend, name)
        try:
            answers.append(exported.predict(model, x))
        finally:
            model.close()
    return answers[0], answers[1]


# --- parity with the native model -------------------------------------------------------------


@pytest.mark.parametrize("runtime", EXPORTED)
def test_export_matches_native_on_held_out_inputs(
    backend: TFBackend,
    exported: Exported,
    runtime: str,
    record_property: Callable[[str, object], None],
) -> None:
    x = dataset(exported.spec.architecture).x_test
    native, answer = _native_and(backend, exported, runtime, x)
    assert answer.shape == native.shape
    assert answer.dtype == np.float32
    diff = float(np.max(np.abs(answer.astype(np.float64) - native)))
    record_property("max_abs_diff", diff)
    record_property("export_seconds", exported.export_seconds[runtime])
    print(
        f"tf {exported.spec.architecture} {runtime}: max abs diff {diff:.3g} over {len(x)} rows, "
        f"exported in {exported.export_seconds[runtime]:.2f} s"
    )
    if exported.spec.task == "classification":  # probabilities
        assert diff < 1e-4
        np.testing.assert_array_equal(answer.argmax(axis=1), native.argmax(axis=1))
    else:  # prices in thousands
        assert diff < 1e-3 * float(np.max(np.abs(native)))


@pytest.mark.parametrize("runtime", ["native", *EXPORTED])
def test_linear_answers_360_on_every_runtime(
    backend: TFBackend, linear: Exported, runtime: str
) -> None:
    model = linear.load(backend, runtime)
    assert linear.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()


def test_tflite_is_converted_from_the_frozen_graph(linear_tflite: Model, linear: Exported) -> None:
    """Regression: converting the SavedModel directly (`from_saved_model`) kept its variables
    as READ_VARIABLE ops, and TFLite then answered the same wrong price for every size."""
    out = linear.predict(linear_tflite, _sizes([600.0, 1800.0, 2700.0]))[:, 0]
    np.testing.assert_allclose(out, [120.0, 360.0, 540.0], atol=1.0)


@pytest.mark.parametrize("runtime", EXPORTED)
def test_batch_size_changes_between_calls(
    backend: TFBackend, exported: Exported, runtime: str
) -> None:
    x = dataset(exported.spec.architecture).x_test
    native = exported.load(backend, "native")
    model = exported.load(backend, runtime)
    for batch in (x[:1], x[1:6], x[6:7], x[7:12]):  # 1, 5, 1, 5: TFLite resizes each time
        expected = exported.predict(native, batch)
        answer = exported.predict(model, batch)
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)
    model.close()
    native.close()


def test_tflite_from_many_threads(linear_tflite: Model, linear: Exported) -> None:
    # Batch sizes 1 and 3 interleave, so threads also race on resizing the input tensor.
    batches = [b for s in range(500, 2750, 50) for b in ([float(s)], [600.0, 1200.0, 2400.0])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda b: linear.predict(linear_tflite, _sizes(b))[:, 0], batches))
    for sizes, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer, [0.2 * s for s in sizes], atol=1.0)


# --- what the exports look like ---------------------------------------------------------------


def test_onnx_export_has_the_signature_names_and_a_dynamic_batch(exported: Exported) -> None:
    graph = onnx.load(str(exported.path / ONNX_FILE)).graph
    assert [i.name for i in graph.input] == [exported.spec.input_name]
    assert [o.name for o in graph.output] == [exported.spec.output_name]
    for tensor in (graph.input[0], graph.output[0]):
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param or not batch.HasField("dim_value")  # symbolic, not a number
    rest = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert rest == list(exported.spec.x.shape[1:])


def test_core_accepts_both_exports(backend: TFBackend, linear: Exported, tmp_path: Path) -> None:
    """The core's own check (serving.engine.runtimes) passes both exports of a fresh copy."""
    version = tmp_path / "1"
    shutil.copytree(linear.path / "model.savedmodel", version / "model.savedmodel")
    meta = VersionMeta(
        framework="tensorflow",
        platform=backend.runtimes["native"],
        architecture="linear",
        signature=signature_for(
            get("linear"), linear.spec.x, linear.spec.input_name, linear.spec.output_name, 0
        ),
    )
    info = export_runtimes(backend, version, meta, dataset("linear").x_test[:16])
    assert {name: entry["status"] for name, entry in info.items()} == dict.fromkeys(
        ["native", "tflite", "onnx"], "ok"
    )
    assert {name: entry["platform"] for name, entry in info.items()} == dict(backend.runtimes)


# --- errors -----------------------------------------------------------------------------------


def test_runtimes_name_the_platforms(backend: TFBackend) -> None:
    assert dict(backend.runtimes) == {
        "native": "tensorflow_savedmodel",
        "tflite": "tensorflow_lite",
        "onnx": "onnxruntime_onnx",
    }
    assert next(iter(backend.runtimes)) == "native"
    assert not hasattr(backend, "platform")


@pytest.mark.parametrize("runtime", ["tensorrt", "native", ""])
def test_unknown_export_runtime_is_invalid_input(
    backend: TFBackend, linear: Exported, runtime: str
) -> None:
    with pytest.raises(InvalidInput, match="exports the runtimes tflite, onnx"):
        backend.export(linear.path, "linear", runtime)


@pytest.mark.parametrize("runtime", ["tensorrt", "onnx"])
def test_unknown_load_runtime_is_invalid_input(
    backend: TFBackend, linear: Exported, runtime: str
) -> None:
    with pytest.raises(InvalidInput, match="loads the 'native' and 'tflite' runtimes"):
        backend.load(linear.path, "linear", runtime)


def test_export_without_a_savedmodel_is_a_repository_error(
    backend: TFBackend, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryError, match=r"no saved_model\.pb"):
        backend.export(tmp_path, "linear", "tflite")
    assert not any(tmp_path.iterdir())


def test_missing_tflite_file_is_a_repository_error(backend: TFBackend, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"model\.tflite does not exist"):
        backend.load(tmp_path, "linear", "tflite")


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer", b"\x00" * 64])
def test_corrupt_tflite_file_is_a_repository_error(
    backend: TFBackend, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "model.tflite").write_bytes(content)
    with pytest.raises(RepositoryError, match="cannot load the TFLite model"):
        backend.load(tmp_path, "linear", "tflite")


def test_tflite_rejects_wrong_shapes_and_missing_inputs(linear_tflite: Model) -> None:
    with pytest.raises(InvalidInput, match=r"size_sqft float32 \[None, 1\], got \[2, 3\]"):
        linear_tflite.predict({"size_sqft": np.zeros((2, 3), np.float32)})
    with pytest.raises(InvalidInput, match="got \\[2\\]"):
        linear_tflite.predict({"size_sqft": np.zeros(2, np.float32)})
    with pytest.raises(InvalidInput, match="missing model input"):
        linear_tflite.predict({"size": _sizes([1800.0])})


def test_closed_tflite_model_is_not_ready(backend: TFBackend, linear: Exported) -> None:
    model = backend.load(linear.path, "linear", "tflite")
    model.close()
    with pytest.raises(ModelNotReady):
        linear.predict(model, _sizes([1800.0]))


def test_export_runtimes_overwrite_an_earlier_export(
    backend: TFBackend, linear: Exported, tmp_path: Path
) -> None:
    version = tmp_path / "1"
    shutil.copytree(linear.path, version)
    (version / "model.tflite").write_bytes(b"stale")
    backend.export(version, "linear", "tflite")
    model = backend.load(version, "linear", "tflite")
    assert linear.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()
