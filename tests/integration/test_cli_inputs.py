"""`twinserve predict` and `compare` on a model of several inputs and outputs, through a gateway
in front of two ONNX Runtime services: JSON and .npy inputs, refusals that exit 2, inputs
generated from the metadata, outputs written as .npy, and the house-price shorthand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from devtools import cli
from onnx_service import OnnxBackend
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import ModelRepository, RuntimeRecord, VersionMeta
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import decode_tensor
from serving.types import Signature, TensorSpec

from .conftest import AioThread

MULTI = "multi"
ONLY_SECOND = "second_only"  # served by the second framework alone
INPUTS = (
    TensorSpec("ids", "INT64", (-1, 3)),
    TensorSpec("features", "FP32", (-1, 2)),
    TensorSpec("mask", "BOOL", (-1, 3)),
)
OUTPUTS = (
    TensorSpec("score", "FP32", (-1, 1)),
    TensorSpec("doubled", "INT64", (-1, 3)),
    TensorSpec("wide", "FP32", (-1, 64)),  # past what is printed in full
)
WIDE = np.arange(128, dtype=np.float32).reshape(2, 64) / 64


def _write_multi(root: Path, name: str, bias: float) -> None:
    """score = features @ [1, 2] + sum(ids * mask) + bias; doubled = ids + ids;
    wide = features @ WIDE: a graph our training did not write, with its signature."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["fw"]),
            helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["idf", "maskf"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axis"], ["summed"], keepdims=1),
            helper.make_node("Add", ["fw", "summed"], ["partial"]),
            helper.make_node("Add", ["partial", "b"], ["score"]),
            helper.make_node("Add", ["ids", "ids"], ["doubled"]),
            helper.make_node("MatMul", ["features", "wide_w"], ["wide"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["batch", 64]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([[1.0], [2.0]], dtype=np.float32), "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
            numpy_helper.from_array(WIDE, "wide_w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version = root / name / "1"
    version.mkdir(parents=True)
    (version / ONNX_FILE).write_bytes(model.SerializeToString())
    meta = VersionMeta(
        framework="test",
        platform="onnxruntime_onnx",
        architecture="multi",
        signature=Signature(INPUTS, OUTPUTS),
        runtimes={"onnx": RuntimeRecord("onnxruntime_onnx")},
    )
    ModelRepository.write_meta(version, meta)


@dataclass
class Front:
    url: str
    stub: pb_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def front(aio: AioThread, seeded_repository: Any) -> Iterator[Front]:
    first, second = seeded_repository(), seeded_repository()
    _write_multi(first, MULTI, bias=0.0)
    _write_multi(second, MULTI, bias=1.0)  # so that compare has a difference to report
    _write_multi(second, ONLY_SECOND, bias=0.0)
    with ExitStack() as stack:
        one = stack.enter_context(aio.service(first, OnnxBackend(), trains=False))
        two = stack.enter_context(aio.service(second, OnnxBackend(), trains=False))
        frameworks = {"onnx": f"127.0.0.1:{one.port}", "pytorch": f"127.0.0.1:{two.port}"}
        gateway = stack.enter_context(aio.gateway(frameworks=frameworks))
        url = f"127.0.0.1:{gateway.port}"
        channel = stack.enter_context(grpc.insecure_channel(url))
        yield Front(url, pb_grpc.GRPCInferenceServiceStub(channel))


def _cli(front: Front, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--url", front.url, *argv])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _direct(
    front: Front, arrays: dict[str, np.ndarray], model: str = MULTI, framework: str = ""
) -> dict[str, np.ndarray]:
    """The answer of a ModelInfer call made here, not through the client's code."""
    request = pb.ModelInferRequest(model_name=model)
    for spec in INPUTS:
        array = arrays[spec.name]
        request.inputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    if framework:
        request.parameters["framework"].string_param = framework
    response = front.stub.ModelInfer(request, timeout=10)
    return {
        output.name: decode_tensor(output.name, output.datatype, output.shape, raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _written(directory: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.load(path) for path in sorted(directory.glob("*.npy"))}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name


ARRAYS = {
    "ids": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64),
    "features": np.array([[0.5, 0.25], [1.5, -2.0]], dtype=np.float32),
    "mask": np.array([[True, False, True], [False, True, True]]),
}


def test_json_and_npy_inputs_answer_as_a_direct_call(
    front: Front, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    np.save(tmp_path / "features.npy", ARRAYS["features"])
    (tmp_path / "mask.json").write_text(json.dumps(ARRAYS["mask"].tolist()))
    code, out, err = _cli(
        front,
        capsys,
        "predict",
        MULTI,
        "--input",
        "ids=[[1, 2, 3], [4, 5, 6]]",
        "-i",
        f"features=@{tmp_path / 'features.npy'}",
        "-i",
        f"mask=@{tmp_path / 'mask.json'}",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    want = _direct(front, ARRAYS)
    _same(_written(tmp_path / "out"), want)
    assert want["score"].ravel().tolist() == [5.0, 8.5]  # 1 + 3 + 0.5 + 0.5, 5 + 6 + 1.5 - 4
    lines = out.splitlines()
    assert lines[0] == "multi v1 (onnx)"
    assert lines[1] == "  score FP32 [2, 1]: [[5. ], [8.5]]"
    assert lines[2] == "  doubled INT64 [2, 3]: [[ 2,  4,  6], [ 8, 10, 12]]"
    (wide,) = [line for line in lines if line.startswith("  wide")]
    assert wide.startswith("  wide FP32 [2, 64]: 128 values, first 0.25, 0.261719, 0.273438,")
    assert wide.endswith(", 0.332031, ... (min -2.49219, max 0.988281)")


def test_the_framework_flag_reaches_the_metadata_call(
    front: Front, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # ONLY_SECOND lives on the second framework, which is not the gateway's default.
    code, out, err = _cli(
        front, capsys, "predict", ONLY_SECOND, "--framework", "pytorch", "--zeros"
    )
    assert code == 0, err
    assert out.startswith("second_only v1 (onnx)\n  score FP32 [1, 1]: [[0.]]\n")


BAD = [
    (
        ["-i", "ids=[[1, 2]]"],
        "input 'ids' takes INT64 [-1, 3] (-1: any size); the JSON given has shape [1, 2]",
    ),
    (["-i", "ids=[[1.5, 2, 3]]"], "input 'ids' takes INT64 [-1, 3]: give whole numbers"),
    (["-i", 'ids=[["a", "b", "c"]]'], "input 'ids' takes INT64 [-1, 3]; the JSON given holds str"),
    (["-i", "ids=[[1, 2, 3]"], "input 'ids': the JSON given is not JSON"),
    (["-i", "size=[[1]]"], "unknown input 'size': the model takes 'ids' (INT64 [-1, 3]), "),
    (["-i", "ids=[[1, 2, 3]]"], "missing input(s) 'features', 'mask': give every one of"),
    (["-i", "ids"], "--input 'ids': write NAME=VALUE"),
    (["1800", "-i", "ids=[[1, 2, 3]]"], "give input values or --input NAME=VALUE, not both"),
]


@pytest.mark.parametrize(("extra", "message"), BAD, ids=lambda v: str(v)[:30])
def test_an_input_that_does_not_fit_exits_2_naming_it(
    front: Front, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, out, err = _cli(front, capsys, "predict", MULTI, *extra)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_a_npy_of_the_wrong_dtype_or_shape_exits_2(
    front: Front, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    np.save(tmp_path / "f64.npy", ARRAYS["features"].astype(np.float64))
    np.save(tmp_path / "wide.npy", np.zeros((2, 3), dtype=np.float32))
    rest = ["-i", "ids=[[1, 2, 3]]", "-i", "mask=[[true, false, true]]"]
    for file, message in (
        ("f64.npy", "takes FP32 [-1, 2] (a .npy file of float32); "),
        ("wide.npy", "takes FP32 [-1, 2] (-1: any size); "),
        ("absent.npy", "input 'features': cannot read "),
    ):
        path = tmp_path / file
        code, _, err = _cli(front, capsys, "predict", MULTI, "-i", f"features=@{path}", *rest)
        assert code == 2 and "error: input 'features" in err and message in err, err
    assert (
        f"{tmp_path / 'f64.npy'} holds float64 [2, 2]"
        in _cli(front, capsys, "predict", MULTI, "-i", f"features=@{tmp_path / 'f64.npy'}", *rest)[
            2
        ]
    )


def test_predict_generates_inputs_from_the_metadata(
    front: Front, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = _cli(
        front, capsys, "predict", MULTI, "--zeros", "--batch", "3", "--output-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "generated inputs (zeros): ids [3, 3], features [3, 2], mask [3, 3]" in err
    zeros = {
        spec.name: np.zeros((3, spec.shape[1]), dtype=_DTYPES[spec.datatype]) for spec in INPUTS
    }
    _same(_written(tmp_path), _direct(front, zeros))
    # Seeded values: the same seed the same answer, another seed another.
    runs = {}
    for run, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        argv = ["predict", MULTI, "--seed", seed, "--output-dir", str(tmp_path / run)]
        assert _cli(front, capsys, *argv)[0] == 0
        runs[run] = _written(tmp_path / run)
    _same(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"]["score"], runs["c"]["score"])
    assert runs["a"]["score"].shape == (1, 1) and runs["a"]["score"][0, 0] != 0


_DTYPES = {"INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}


def test_compare_generates_inputs_and_reports_the_difference(
    front: Front, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(front, capsys, "compare", MULTI, "--zeros", "--batch", "2")
    assert code == 0, err
    lines = out.splitlines()
    first = [line for line in lines if line.startswith("onnx/native")]
    second = [line for line in lines if line.startswith("pytorch/native")]
    assert len(first) == len(second) == 3  # one line per output
    assert any("score FP32 [2, 1]: [[0.]" in line for line in first)
    assert any("score FP32 [2, 1]: [[1.]" in line for line in second)
    assert "max abs difference onnx/native vs pytorch/native (score): 1" in lines
    assert "max abs difference onnx/native vs pytorch/native (wide): 0" in lines


def test_compare_takes_inputs_and_its_first_target_gives_the_metadata(
    front: Front, capsys: pytest.CaptureFixture[str]
) -> None:
    given = ["-i", "ids=[[1, 2, 3]]", "-i", "features=[[1, 1]]", "-i", "mask=[[1, 1, 0]]"]
    code, out, err = _cli(front, capsys, "compare", ONLY_SECOND, *given, "--target", "pytorch")
    assert code == 0, err
    assert "pytorch/native" in out and "score FP32 [1, 1]: [[6.]]" in out


def test_the_house_price_shorthand_is_unchanged(
    front: Front, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = []
    for argv in (
        ["predict", "1800", "1200"],
        ["predict", "house_price", "1800", "1200"],
        ["predict", "--model", "house_price", "1800", "1200"],
    ):
        code, out, err = _cli(front, capsys, *argv)
        assert code == 0, err
        answers.append(out)
    assert (
        answers[0]
        == "house_price v1 (onnx): 1800 -> 360.00\nhouse_price v1 (onnx): 1200 -> 240.00\n"
    )
    assert answers[1] == answers[2] == answers[0]
    code, out, _ = _cli(front, capsys, "compare", "house_price", "1800")
    assert code == 0
    assert "onnx/native" in out and "price_k: 1800 -> 360.00" in out
    code, _, err = _cli(front, capsys, "predict", "other", "1800", "--model", "house_price")
    assert code == 2 and "model 'other' and --model 'house_price' disagree" in err
