"""The load test on a user's model, end to end: a Triton model repository holding an ONNX model
of two inputs (FP32 and INT64) that no training wrote, served by the real ONNX Runtime service;
the requests come from its metadata and configuration, and a batch over its max_batch_size is
not available. Then the same repository as a local stack's (`--model-repository`): every
service serves it as it is, nothing is seeded into it, and the gateway path reads the metadata
with the framework header."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from devtools.stack import launch
from loadtest.cli import main
from loadtest.targets import seed_models

MODEL = "pair"
CONFIG = """platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "n" data_type: TYPE_INT64 dims: [ 1 ] }
]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
QUIET = {"TWINSERVE_LOG_LEVEL": "WARNING"}
QUICK = ["--concurrency", "1", "--duration", "0.3", "--warmup", "0.1", "--clients", "1"]


def _write_model(repository: Path) -> None:
    """y = 2x + n (n broadcast over x's 3 features), in Triton's layout."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "nf"], ["y"]),
        ],
        MODEL,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime release this project accepts
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (repository / MODEL / "config.pbtxt").write_text(CONFIG)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-repository")
    _write_model(root)
    return root


@pytest.fixture(scope="module")
def onnx_service(repository: Path) -> Iterator[str]:
    process = launch("onnx", "onnx_service", ["--model-repository", str(repository)], env=QUIET)
    try:
        yield process.address
    finally:
        process.stop()


def _cells(out: Path) -> list[dict[str, Any]]:
    return list(json.loads((out / "report.json").read_text())["cells"])


def _by_batch(cells: list[dict[str, Any]], path: str) -> dict[int, dict[str, Any]]:
    return {
        c["batch"]: c
        for c in cells
        if (c["model"], c["framework"], c["path"]) == (MODEL, "onnx", path)
    }


def _check_batches(cells: dict[int, dict[str, Any]]) -> None:
    for batch in (1, 4):
        cell = cells[batch]
        assert cell["status"] == "ok", cell
        assert cell["result"]["ok"] > 0 and not cell["result"]["errors"], cell
        assert not cell["result"]["wrong_answers"], cell
    assert cells[16]["status"] == "not available"
    assert cells[16]["reason"] == "batch 16 is over the model's max_batch_size 8"


def test_a_users_model_is_loaded_from_its_metadata(onnx_service: str, tmp_path: Path) -> None:
    args = ["--service", f"onnx={onnx_service}", "--models", f"{MODEL},absent"]
    main([*args, "--batches", "1,4,16", *QUICK, "--out", str(tmp_path)])
    cells = _cells(tmp_path)
    _check_batches(_by_batch(cells, "direct"))
    # A model the service does not have: its cells say so, as the service did.
    absent = [c for c in cells if c["model"] == "absent" and c["framework"] == "onnx"]
    assert absent and all(c["status"] == "not available" for c in absent)
    direct = next(c for c in absent if c["path"] == "direct")
    assert direct["reason"].startswith("NOT_FOUND: ") and "absent" in direct["reason"]


def test_a_triton_repository_is_every_local_services(repository: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    seed_models(repository, tmp_path / "seed.log")  # nothing to seed into a user's repository
    args = ["--model-repository", str(repository), "--frameworks", "onnx", "--devices", "cpu"]
    args += ["--no-echo", "--models", MODEL, "--batches", "1,4,16"]
    main([*args, *QUICK, "--out", str(tmp_path / "report")])
    cells = _cells(tmp_path / "report")
    _check_batches(_by_batch(cells, "direct"))
    _check_batches(_by_batch(cells, "gateway"))
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before
