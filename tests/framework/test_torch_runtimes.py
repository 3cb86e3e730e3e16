"""TorchBackend's exports: TorchScript (served by the backend) and ONNX (served by the core's
OnnxModel), each checked against the native eager model on held-out inputs, for every
architecture trained once per module (mlp and cnn for a few epochs: parity needs trained
weights, not good ones)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from serving.backend import Model
from serving.backend.architectures import get, signature_for
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import VersionMeta
from serving.engine.runtimes import export_runtimes
from serving.errors import InvalidInput, ModelNotReady, RepositoryError
from tests.framework.exports import ARCHITECTURES, Exported, dataset, train_and_export
from torch_service import TorchBackend
from torch_service.backend import CONFIG_FILE, WEIGHTS_FILE
from torch_service.runtimes import TORCHSCRIPT_FILE, load_torchscript

pytestmark = pytest.mark.framework

EPOCHS = {"linear": 200, "mlp": 2, "cnn": 2}  # linear's default: it must answer 360
EXPORTED = ["torchscript", "onnx"]


def _train_and_export(backend: TorchBackend, path: Path, architecture: str) -> Exported:
    return train_and_export(backend, path, architecture, EXPORTED, epochs=EPOCHS[architecture])


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend()


@pytest.fixture(scope="module")
def linear(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("torch-linear"), "linear")


@pytest.fixture(scope="module")
def mlp(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("torch-mlp"), "mlp")


@pytest.fixture(scope="module")
def cnn(backend: TorchBackend, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _train_and_export(backend, tmp_path_factory.mktemp("torch-cnn"), "cnn")


@pytest.fixture(params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest) -> Exported:
    result: Exported = request.getfixturevalue(request.param)
    return result


@pytest.fixture
def linear_torchscript(backend: TorchBackend, linear: Exported) -> Iterator[Model]:
    model = backend.load(linear.path, "linear", "torchscript")
    yield model
    model.close()


def _sizes(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def _copy_version(exported: Exported, tmp_path: Path) -> Path:
    version = tmp_path / "version"
    shutil.copytree(exported.path, version)
    return version


# --- parity with the native model -------------------------------------------------------------


@pytest.mark.parametrize("runtime", EXPORTED)
def test_export_matches_native_on_held_out_inputs(
    backend: TorchBackend,
    exported: Exported,
    runtime: str,
    record_property: Callable[[str, object], None],
) -> None:
    x = dataset(exported.spec.architecture).x_test
    native, model = exported.load(backend, "native"), exported.load(backend, runtime)
    expected, answer = exported.predict(native, x), exported.predict(model, x)
    native.close()
    model.close()
    assert answer.shape == expected.shape
    assert answer.dtype == np.float32
    diff = float(np.max(np.abs(answer.astype(np.float64) - expected)))
    record_property("max_abs_diff", diff)
    record_property("export_seconds", exported.export_seconds[runtime])
    print(
        f"torch {exported.spec.architecture} {runtime}: max abs diff {diff:.3g} over {len(x)} "
        f"rows, exported in {exported.export_seconds[runtime]:.3f} s"
    )
    if exported.spec.task == "classification":  # probabilities
        assert diff < 1e-4
        np.testing.assert_array_equal(answer.argmax(axis=1), expected.argmax(axis=1))
    else:  # prices in thousands
        np.testing.assert_allclose(answer, expected, rtol=1e-3)


@pytest.mark.parametrize("runtime", ["native", *EXPORTED])
def test_linear_answers_360_on_every_runtime(
    backend: TorchBackend, linear: Exported, runtime: str
) -> None:
    model = linear.load(backend, runtime)
    assert linear.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()


@pytest.mark.parametrize("runtime", EXPORTED)
def test_batch_size_changes_between_calls(
    backend: TorchBackend, exported: Exported, runtime: str
) -> None:
    """Traced with a batch of two, served with 1 and 5: no batch size is baked in."""
    x = dataset(exported.spec.architecture).x_test
    native = exported.load(backend, "native")
    model = exported.load(backend, runtime)
    for batch in (x[:1], x[1:6], x[6:7], x[7:12]):
        expected = exported.predict(native, batch)
        answer = exported.predict(model, batch)
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)
    model.close()
    native.close()


def test_torchscript_from_many_threads(linear_torchscript: Model, linear: Exported) -> None:
    # Batch sizes 1 and 3 interleave, so threads also race the graph executor's profiling.
    batches = [[float(s)] for s in range(500, 2750, 50)] + [[600.0, 1200.0, 2400.0]] * 30
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda b: linear.predict(linear_torchscript, _sizes(b))[:, 0], batches)
        )
    for sizes, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer, [0.2 * s for s in sizes], atol=1.0)


def test_torchscript_accepts_read_only_inputs(linear_torchscript: Model) -> None:
    # The codec decodes raw contents with np.frombuffer, which is read-only.
    x = np.frombuffer(np.float32(1800.0).tobytes(), dtype=np.float32).reshape(1, 1)
    answer = linear_torchscript.predict({"size_sqft": x})["price_k"]
    assert answer[0, 0] == pytest.approx(360.0, abs=1.0)


def test_core_accepts_both_exports(backend: TorchBackend, linear: Exported, tmp_path: Path) -> None:
    """The core's own check (serving.engine.runtimes) passes both exports of a fresh copy."""
    version = tmp_path / "1"
    version.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy(linear.path / name, version / name)
    meta = VersionMeta(
        framework="pytorch",
        platform=backend.runtimes["native"],
        architecture="linear",
        signature=signature_for(
            get("linear"), linear.spec.x, linear.spec.input_name, linear.spec.output_name, 0
        ),
    )
    info = export_runtimes(backend, version, meta, dataset("linear").x_test[:16])
    assert {name: entry["status"] for name, entry in info.items()} == dict.fromkeys(
        ["native", "torchscript", "onnx"], "ok"
    )
    assert {name: entry["platform"] for name, entry in info.items()} == dict(backend.runtimes)


# --- what the exports look like ---------------------------------------------------------------


def test_onnx_export_has_the_signature_names_and_a_dynamic_batch(exported: Exported) -> None:
    graph = onnx.load(str(exported.path / ONNX_FILE)).graph
    assert [i.name for i in graph.input] == [exported.spec.input_name]
    assert [o.name for o in graph.output] == [exported.spec.output_name]
    for tensor in (graph.input[0], graph.output[0]):
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param == "batch"
        assert not batch.HasField("dim_value")
    rest = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    assert rest == list(exported.spec.x.shape[1:])


def test_exports_write_only_their_files(exported: Exported) -> None:
    assert sorted(p.name for p in exported.path.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TORCHSCRIPT_FILE, ONNX_FILE]
    )
    archive = load_torchscript(exported.path / TORCHSCRIPT_FILE, torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in archive.state_dict().values())


def test_torchscript_runs_without_the_weights_file(
    backend: TorchBackend, linear: Exported, tmp_path: Path
) -> None:
    """The archive is self-contained: loading it rebuilds nothing from weights.pt."""
    version = _copy_version(linear, tmp_path)
    (version / WEIGHTS_FILE).unlink()
    model = backend.load(version, "linear", "torchscript")
    assert linear.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()


@pytest.mark.parametrize("runtime", EXPORTED)
def test_export_overwrites_an_earlier_export(
    backend: TorchBackend, linear: Exported, tmp_path: Path, runtime: str
) -> None:
    version = _copy_version(linear, tmp_path)
    file = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}[runtime]
    (version / file).write_bytes(b"stale")
    backend.export(version, "linear", runtime)
    exported = Exported(linear.spec, version, {})
    model = exported.load(backend, runtime)
    assert exported.predict(model, _sizes([1800.0]))[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()


def test_failed_export_leaves_no_file(
    backend: TorchBackend, linear: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _copy_version(linear, tmp_path)
    (version / ONNX_FILE).unlink()

    def broken(*args: object, **kwargs: object) -> None:
        Path(str(args[2])).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        backend.export(version, "linear", "onnx")
    assert sorted(p.name for p in version.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TORCHSCRIPT_FILE]
    )


# --- errors -----------------------------------------------------------------------------------


def test_runtimes_name_the_platforms(backend: TorchBackend) -> None:
    assert dict(backend.runtimes) == {
        "native": "pytorch_eager",
        "torchscript": "pytorch_torchscript",
        "onnx": "onnxruntime_onnx",
    }
    assert next(iter(backend.runtimes)) == "native"
    assert not hasattr(backend, "platform")


@pytest.mark.parametrize("runtime", ["tensorrt", "native", ""])
def test_unknown_export_runtime_is_invalid_input(
    backend: TorchBackend, linear: Exported, runtime: str
) -> None:
    with pytest.raises(InvalidInput, match="exports the runtimes torchscript, onnx"):
        backend.export(linear.path, "linear", runtime)


@pytest.mark.parametrize("runtime", ["tensorrt", "onnx"])
def test_unknown_load_runtime_is_invalid_input(
    backend: TorchBackend, linear: Exported, runtime: str
) -> None:
    with pytest.raises(InvalidInput, match="loads the 'native' and 'torchscript' runtimes"):
        backend.load(linear.path, "linear", runtime)


def test_export_without_weights_is_a_repository_error(
    backend: TorchBackend, linear: Exported, tmp_path: Path
) -> None:
    shutil.copy(linear.path / CONFIG_FILE, tmp_path / CONFIG_FILE)
    with pytest.raises(RepositoryError, match=r"no weights\.pt"):
        backend.export(tmp_path, "linear", "torchscript")
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]


def test_export_under_another_architecture_is_a_repository_error(
    backend: TorchBackend, linear: Exported
) -> None:
    with pytest.raises(RepositoryError, match="architecture 'linear', not 'mlp'"):
        backend.export(linear.path, "mlp", "onnx")


def test_missing_torchscript_file_is_a_repository_error(
    backend: TorchBackend, linear: Exported, tmp_path: Path
) -> None:
    version = _copy_version(linear, tmp_path)
    (version / TORCHSCRIPT_FILE).unlink()
    with pytest.raises(RepositoryError, match=r"no model\.torchscript\.pt"):
        backend.load(version, "linear", "torchscript")


@pytest.mark.parametrize("content", [b"", b"not a zip archive", b"PK\x03\x04" + b"\x00" * 64])
def test_corrupt_torchscript_file_is_a_repository_error(
    backend: TorchBackend, linear: Exported, tmp_path: Path, content: bytes
) -> None:
    version = _copy_version(linear, tmp_path)
    (version / TORCHSCRIPT_FILE).write_bytes(content)
    with pytest.raises(RepositoryError, match="not a readable TorchScript archive"):
        backend.load(version, "linear", "torchscript")


def test_closed_torchscript_model_is_not_ready(backend: TorchBackend, linear: Exported) -> None:
    model = backend.load(linear.path, "linear", "torchscript")
    model.close()
    with pytest.raises(ModelNotReady):
        linear.predict(model, _sizes([1800.0]))
