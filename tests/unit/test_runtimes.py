"""Exports made at training time: each checked against the native model, refused ones
removed and recorded."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.backend import TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import RuntimeRecord, RuntimeStatus, VersionMeta
from serving.engine.runtimes import export_runtimes, load_runtime
from serving.errors import BackendUnavailable, RepositoryError

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
    assert info["native"] == RuntimeRecord("numpy_affine", RuntimeStatus.OK)
    onnx = info["onnx"]
    assert (onnx.status, onnx.platform, onnx.reason) == (RuntimeStatus.OK, "onnxruntime_onnx", "")
    assert onnx.max_abs_diff is not None and 0 <= onnx.max_abs_diff <= 1e-3
    assert onnx.tolerance == pytest.approx(1e-3 * 700.0)  # relative to the largest answer
    assert _files(tmp_path / "v") == ["affine.json", ONNX_FILE]
    model = load_runtime(backend, tmp_path / "v", meta, "onnx")
    answer = model.predict({"size_sqft": np.array([[1800.0]], np.float32)})["price_k"]
    assert answer.ravel().tolist() == pytest.approx([360.0], abs=1e-3)


def test_an_export_that_disagrees_is_refused_and_removed(tmp_path: Path) -> None:
    backend = AffineBackend(export_skew=50.0)
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    onnx = info["onnx"]
    assert onnx.status is RuntimeStatus.REFUSED
    assert onnx.max_abs_diff == pytest.approx(50.0, abs=1e-2)
    assert "differs from the native model by 50" in onnx.reason
    assert _files(tmp_path / "v") == ["affine.json"]


def test_a_nan_export_is_refused(tmp_path: Path) -> None:
    backend = AffineBackend(export_skew=float("nan"))
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["onnx"].status is RuntimeStatus.REFUSED
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
        (_BrokenExport(), "the export failed"),
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
    assert info["native"].status is RuntimeStatus.OK
    assert info["onnx"].status is RuntimeStatus.REFUSED
    assert fragment in info["onnx"].reason
    assert info["onnx"].max_abs_diff is None
    assert "max_abs_diff" not in info["onnx"].to_json()
    assert _files(tmp_path / "v") == ["affine.json", "notes.txt"]


def test_a_crashed_export_reads_short_and_logs_the_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The record is what clients are shown; the converter's own words go to the log."""
    backend = _BrokenExport()
    meta = _trained(backend, tmp_path / "v")
    with caplog.at_level(logging.WARNING, logger="serving.engine.runtimes"):
        info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["onnx"].reason == "the export failed"
    (record,) = [r for r in caplog.records if "refusing the onnx export" in r.getMessage()]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "converter crashed"


def test_records_keep_the_file_format(tmp_path: Path) -> None:
    """model.json keeps the keys it had before records were typed: absent, never null."""
    refused = RuntimeRecord("onnxruntime_onnx", RuntimeStatus.REFUSED, 0.7, None, "why")
    assert refused.to_json() == {
        "platform": "onnxruntime_onnx",
        "status": "refused",
        "tolerance": 0.7,
        "reason": "why",
    }
    assert RuntimeRecord.from_json(refused.to_json()) == refused
    with pytest.raises(ValueError, match="'bogus' is not a valid RuntimeStatus"):
        RuntimeRecord.from_json({"platform": "x", "status": "bogus"})


def test_a_native_model_that_cannot_load_fails_the_export(tmp_path: Path) -> None:
    backend = AffineBackend()
    meta = _trained(backend, tmp_path / "v")
    (tmp_path / "v" / "affine.json").write_text("garbage")
    with pytest.raises(RepositoryError):
        export_runtimes(backend, tmp_path / "v", meta, X)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this ONNX Runtime has CUDA: the case is a GPU service without it",
)
def test_an_onnx_export_made_on_a_gpu_service_is_checked_on_the_cpu(tmp_path: Path) -> None:
    # This ONNX Runtime has no CUDAExecutionProvider (the CPU build): loading the export on
    # 'cuda' fails, which must not refuse (and delete) an export that is good.
    backend = AffineBackend()
    backend.device = "cuda"
    meta = _trained(backend, tmp_path / "v")
    info = export_runtimes(backend, tmp_path / "v", meta, X)
    assert info["onnx"].status is RuntimeStatus.OK
    assert ONNX_FILE in _files(tmp_path / "v")
    with pytest.raises(BackendUnavailable, match="has no CUDAExecutionProvider"):
        load_runtime(backend, tmp_path / "v", meta, "onnx")  # served where it runs: refused
