"""Exports made at training time: each checked against the native model, refused ones
removed and recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.backend import TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import VersionMeta
from serving.engine.runtimes import export_runtimes, load_runtime
from serving.errors import RepositoryError

X = np.linspace(500, 3500, 16, dtype=np.float32).reshape(-1, 1)
SPEC = TrainSpec(
    architecture="linear",
    x=X,
    y=0.2 * X,
    x_val=X[:0],
    y_val=X[:0],
    input_name="size_sqft",
    output_name="price_k",
)


def _trained(backend: AffineBackend, directory: Path) -> VersionMeta:
    directory.mkdir()
    result = backend.train(SPEC, directory)
    return VersionMeta(
        framework=backend.framework,
        platform=backend.runtimes["native"],
        architecture="linear",
        signature=result.signature,
    )


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_faithful_export_is_kept_with_its_difference(tmp_path: Path) -> None:
    backend = AffineBackend()
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["native"] == {"status": "ok", "platform": "numpy_affine"}
    onnx = info["onnx"]
    assert (onnx["status"], onnx["platform"]) == ("ok", "onnxruntime_onnx")
    assert 0 <= onnx["max_abs_diff"] <= 1e-3
    assert onnx["tolerance"] == pytest.approx(1e-3 * 700.0)  # relative to the largest answer
    assert _files(tmp_path / "v") == ["affine.json", ONNX_FILE]
    model = load_runtime(backend, tmp_path / "v", meta, "onnx")
    answer = model.predict({"size_sqft": np.array([[1800.0]], np.float32)})["price_k"]
    assert answer.ravel().tolist() == pytest.approx([360.0], abs=1e-3)


def test_an_export_that_disagrees_is_refused_and_removed(tmp_path: Path) -> None:
    backend = AffineBackend(export_skew=50.0)
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    onnx = info["onnx"]
    assert onnx["status"] == "refused"
    assert onnx["max_abs_diff"] == pytest.approx(50.0, abs=1e-2)
    assert "differs from the native model by 50" in onnx["reason"]
    assert _files(tmp_path / "v") == ["affine.json"]


def test_a_nan_export_is_refused(tmp_path: Path) -> None:
    backend = AffineBackend(export_skew=float("nan"))
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["onnx"]["status"] == "refused"
    assert _files(tmp_path / "v") == ["affine.json"]


class _BrokenExport(AffineBackend):
    """Writes part of an export (a file and a directory), then fails."""

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        (version_dir / ONNX_FILE).write_bytes(b"\x08\x01partial")
        (version_dir / "export-scratch").mkdir()
        (version_dir / "export-scratch" / "chunk").write_text("x")
        raise RuntimeError("converter crashed")


class _TruncatedExport(AffineBackend):
    """Writes an ONNX file that cannot be loaded, without raising."""

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        super().export(version_dir, architecture, runtime)
        data = (version_dir / ONNX_FILE).read_bytes()
        (version_dir / ONNX_FILE).write_bytes(data[: len(data) // 2])


class _WrongShapeExport(AffineBackend):
    """A loadable export that answers two columns where the native model answers one."""

    def export(self, version_dir: Path, architecture: str, runtime: str) -> None:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "wide",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
            initializer=[numpy_helper.from_array(np.ones((1, 2), np.float32), "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (version_dir / ONNX_FILE).write_bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("backend", "fragment"),
    [
        (_BrokenExport(), "RuntimeError: converter crashed"),
        (_TruncatedExport(), "cannot load ONNX model"),
        (_WrongShapeExport(), "answers shape [16, 2], native [16, 1]"),
    ],
)
def test_a_failed_export_is_refused_and_its_partial_files_removed(
    tmp_path: Path, backend: AffineBackend, fragment: str
) -> None:
    meta = _trained(backend, tmp_path / "v")
    (tmp_path / "v" / "notes.txt").write_text("written before the export: kept")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["native"]["status"] == "ok"
    assert info["onnx"]["status"] == "refused"
    assert fragment in info["onnx"]["reason"]
    assert "max_abs_diff" not in info["onnx"]
    assert _files(tmp_path / "v") == ["affine.json", "notes.txt"]


def test_a_native_model_that_cannot_load_fails_the_export(tmp_path: Path) -> None:
    backend = AffineBackend()
    meta = _trained(backend, tmp_path / "v")
    (tmp_path / "v" / "affine.json").write_text("garbage")
    with pytest.raises(RepositoryError):
        export_runtimes(backend, tmp_path / "v", meta, X)
