"""What only TorchBackend has, beyond the contract every backend meets
(`tests/framework/conformance/`): its version files (a weights_only state_dict and the
constructor arguments), the self-contained TorchScript archive, seeded weights, CUDA devices.
The models are the session's (`tests/framework/backends.py`), trained once."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import META_FILE
from serving.errors import BackendUnavailable, InvalidInput, RepositoryError
from tests.framework.backends import Version, Versions, dataset, spec_for

pytest.importorskip("torch")

# Imported only once PyTorch is known to be installed.
import torch

from torch_service import TorchBackend
from torch_service.backend import CONFIG_FILE, WEIGHTS_FILE
from torch_service.export import TORCHSCRIPT_FILE, load_torchscript

pytestmark = pytest.mark.framework


@pytest.fixture(scope="module")
def backend(versions: Versions) -> TorchBackend:
    backend = versions.backend("pytorch")
    assert isinstance(backend, TorchBackend)
    return backend


@pytest.fixture(scope="module")
def linear(versions: Versions) -> Version:
    return versions.get("pytorch", "linear")


def _copy(version: Version, tmp_path: Path) -> Version:
    copy = replace(version, root=tmp_path)
    shutil.copytree(version.path, copy.path)
    return copy


def _price(backend: TorchBackend, version: Version, runtime: str = "native") -> float:
    return float(version.answers(backend, runtime, np.array([[1800.0]], np.float32))[0, 0])


# --- the files of a version -----------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["linear", "mlp", "cnn"])
def test_a_version_holds_its_files_and_exports_trace_on_the_cpu(
    versions: Versions, architecture: str
) -> None:
    version = versions.get("pytorch", architecture)
    assert sorted(p.name for p in version.path.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TORCHSCRIPT_FILE, ONNX_FILE, META_FILE]
    )
    archive = load_torchscript(version.path / TORCHSCRIPT_FILE, torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in archive.state_dict().values())
    graph = onnx.load(str(version.path / ONNX_FILE)).graph
    for tensor in (*graph.input, *graph.output):
        assert tensor.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_config_holds_the_constructor_arguments(versions: Versions) -> None:
    def kwargs(architecture: str) -> object:
        path = versions.get("pytorch", architecture).path / CONFIG_FILE
        return json.loads(path.read_text())["kwargs"]

    assert kwargs("cnn") == {"height": 8, "width": 8, "channels": 1, "classes": 10}
    assert kwargs("mlp") == {"features": 6}


def test_linear_config_without_kwargs_still_loads(
    backend: TorchBackend, linear: Version, tmp_path: Path
) -> None:
    # Versions saved before the architectures took arguments wrote "kwargs": {}.
    old = _copy(linear, tmp_path)
    config = json.loads((old.path / CONFIG_FILE).read_text())
    (old.path / CONFIG_FILE).write_text(json.dumps({**config, "kwargs": {}}))
    assert _price(backend, old) == pytest.approx(360.0, abs=1.0)


def test_a_float64_batch_is_served_as_float32(backend: TorchBackend, linear: Version) -> None:
    out = linear.answers(backend, "native", np.linspace(500, 2500, 5).reshape(5, 1))
    assert out.shape == (5, 1)
    assert out.dtype == np.float32


def test_torchscript_runs_without_the_weights_file(
    backend: TorchBackend, linear: Version, tmp_path: Path
) -> None:
    """The archive is self-contained: loading it rebuilds nothing from weights.pt."""
    copy = _copy(linear, tmp_path)
    (copy.path / WEIGHTS_FILE).unlink()
    assert _price(backend, copy, "torchscript") == pytest.approx(360.0, abs=1.0)


def test_a_failed_export_leaves_no_file(
    backend: TorchBackend, linear: Version, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy(linear, tmp_path)
    (copy.path / ONNX_FILE).unlink()

    def broken(*args: object, **kwargs: object) -> None:
        Path(str(args[2])).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        backend.export(copy.path, "linear", "onnx")
    assert sorted(p.name for p in copy.path.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TORCHSCRIPT_FILE, META_FILE]
    )


def test_export_without_weights_is_a_repository_error(
    backend: TorchBackend, linear: Version, tmp_path: Path
) -> None:
    shutil.copy(linear.path / CONFIG_FILE, tmp_path / CONFIG_FILE)
    with pytest.raises(RepositoryError, match=r"no weights\.pt"):
        backend.export(tmp_path, "linear", "torchscript")
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]


@pytest.mark.parametrize("runtime", ["native", "torchscript", "onnx"])
def test_another_architecture_is_a_repository_error(
    backend: TorchBackend, linear: Version, runtime: str
) -> None:
    with pytest.raises(RepositoryError, match="architecture 'linear', not 'mlp'"):
        if runtime == "onnx":
            backend.export(linear.path, "mlp", "onnx")
        else:
            backend.load(linear.path, "mlp", runtime)


def test_corrupt_weights_are_a_repository_error(
    backend: TorchBackend, linear: Version, tmp_path: Path
) -> None:
    copy = _copy(linear, tmp_path)
    (copy.path / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RepositoryError, match="state_dict"):
        backend.load(copy.path, "linear")


# --- seeds ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_weights(
    backend: TorchBackend, linear: Version, tmp_path: Path
) -> None:
    backend.train(replace(linear.spec, on_epoch=None), tmp_path)
    a = torch.load(linear.path / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(backend: TorchBackend, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backend.train(spec_for("linear", epochs=1, seed=0), tmp_path / "a")
    backend.train(spec_for("linear", epochs=1, seed=1), tmp_path / "b")
    a = torch.load(tmp_path / "a" / WEIGHTS_FILE, weights_only=True)
    b = torch.load(tmp_path / "b" / WEIGHTS_FILE, weights_only=True)
    assert not torch.equal(a["body.weight"], b["body.weight"])


# --- devices --------------------------------------------------------------------------------


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
    spec = spec_for("linear", device="cuda", on_epoch=lambda epoch, _: seen.append(epoch))
    with pytest.raises(BackendUnavailable, match="no CUDA device is available"):
        backend.train(spec, tmp_path)
    assert seen == []  # refused before the first epoch


def test_malformed_device_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        TorchBackend(device="gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_and_saves_cpu_weights(backend: TorchBackend, tmp_path: Path) -> None:
    backend.train(spec_for("cnn", device="cuda"), tmp_path)
    weights = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(t.device.type == "cpu" for t in weights.values())
    data = dataset("cnn")
    model = backend.load(tmp_path, "cnn")  # served on the CPU backend
    probabilities = model.predict({data.input_name: data.x_test})[data.output_name]
    model.close()
    assert float((probabilities.argmax(axis=1) == data.y_test).mean()) >= 0.95
