"""The client's input handling (devtools.inputs) and answers (devtools.outputs) on every
datatype, without a server: JSON conversion and its refusals, .npy checks, generated inputs,
the raw request they make (read back by the server's codec) and printed or written outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.inputs import (
    InputError,
    generate,
    given,
    infer_request,
    model_and_values,
    parse_value,
)
from devtools.outputs import describe, write_outputs
from serving.protocol.codec import DATATYPES, decode_inputs
from serving.types import TensorSpec


def _spec(datatype: str, shape: tuple[int, ...] = (-1, 2)) -> TensorSpec:
    return TensorSpec("x", datatype, shape)


def _round_trip(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """What the server decodes from the request the client builds."""
    (decoded,) = decode_inputs(infer_request("m", [spec], {spec.name: array}))
    assert (decoded.name, decoded.datatype) == (spec.name, spec.datatype)
    return decoded.data


NUMERIC = sorted(DATATYPES - {"BYTES", "BOOL"})


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_numbers_become_the_inputs_datatype(datatype: str) -> None:
    spec = _spec(datatype)
    array = parse_value(spec, "[[0, 1], [2, 3]]")
    assert array.shape == (2, 2)
    assert _round_trip(spec, array).tolist() == [[0, 1], [2, 3]]


def test_json_bools_and_strings() -> None:
    flags = parse_value(_spec("BOOL"), "[[true, false], [0, 1]]")
    assert flags.dtype == np.bool_ and _round_trip(_spec("BOOL"), flags).tolist() == [
        [True, False],
        [False, True],
    ]
    words = parse_value(_spec("BYTES"), '[["héllo", ""]]')
    assert _round_trip(_spec("BYTES"), words).tolist() == [["héllo".encode(), b""]]
    assert parse_value(_spec("FP32"), "[[0.5, 1e-3]]").dtype == np.float32


REFUSED = [
    ("INT32", "[[1.5, 2]]", "input 'x' takes INT32 [-1, 2]: give whole numbers; the JSON"),
    ("UINT8", "[[300, 1]]", "takes UINT8 [-1, 2]: values from 0 to 255; the JSON given has 1..300"),
    ("INT64", "[[true, false]]", "give whole numbers"),
    ("FP32", '[["a", "b"]]', "takes FP32 [-1, 2]; the JSON given holds strings"),
    ("FP32", "[[true, false]]", "give numbers; the JSON given holds true/false"),
    ("FP32", "[[null, 1]]", "holds values that are not numbers"),
    ("FP16", "[[1e6, 1]]", "has values too large for FP16"),
    ("BOOL", "[[2, 0]]", "give true/false (or 0/1)"),
    ("BYTES", "[[1, 2]]", "takes BYTES [-1, 2]: give JSON strings"),
    ("FP32", "[[1, 2], [3]]", "the JSON given is not a rectangular array"),
    ("FP32", "[1, 2]", "takes FP32 [-1, 2] (-1: any size); the JSON given has shape [2]"),
    ("FP32", "[[1, 2]", "input 'x': the JSON given is not JSON"),
]


@pytest.mark.parametrize(("datatype", "text", "message"), REFUSED, ids=lambda v: str(v)[:20])
def test_json_that_does_not_fit_is_refused_with_what_the_input_takes(
    datatype: str, text: str, message: str
) -> None:
    with pytest.raises(InputError) as info:
        parse_value(_spec(datatype), text)
    assert message in str(info.value)


def test_a_npy_must_hold_the_inputs_dtype_and_shape(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.ones((3, 2), dtype=">f4"))  # another byte order is still float32
    assert (
        _round_trip(_spec("FP32"), parse_value(_spec("FP32"), f"@{path}")).tolist()
        == [[1.0, 1.0]] * 3
    )
    for saved, datatype, message in (
        (np.ones((3, 2)), "FP32", "(a .npy file of float32); "),
        (np.ones((3, 2), dtype=np.int32), "INT64", "(a .npy file of int64); "),
        (np.ones((3, 2), dtype=np.float32), "BYTES", "(a .npy file of str or bytes); "),
        (np.ones((3, 3), dtype=np.float32), "FP32", "(-1: any size); "),
    ):
        np.save(path, saved)
        with pytest.raises(InputError) as info:
            parse_value(_spec(datatype), f"@{path}")
        assert f"input 'x' takes {datatype} [-1, 2] " in str(info.value), info.value
        assert message in str(info.value) and str(path) in str(info.value)


def test_a_npy_of_strings_feeds_bytes_and_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.array([["a", "bc"]]))
    assert _round_trip(_spec("BYTES"), parse_value(_spec("BYTES"), f"@{path}")).tolist() == [
        [b"a", b"bc"]
    ]
    np.save(path, np.array([["a", 1]], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects"):
        parse_value(_spec("BYTES"), f"@{path}")


def test_a_json_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "v.json").write_text("[[1, 2]]")
    assert parse_value(_spec("INT8"), f"@{tmp_path / 'v.json'}").tolist() == [[1, 2]]
    with pytest.raises(InputError, match=r"cannot read .*missing\.json: No such file"):
        parse_value(_spec("INT8"), f"@{tmp_path / 'missing.json'}")


MODEL = [TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("text", "BYTES", (-1,))]


def test_given_checks_names_against_the_model() -> None:
    arrays = given(MODEL, ["ids=[[1, 2, 3]]", 'text=["a"]'])
    assert arrays["ids"].dtype == np.int64 and arrays["text"].tolist() == [b"a"]
    for assignments, message in (
        (["size=1"], "unknown input 'size': the model takes 'ids' (INT64 [-1, 3]), 'text'"),
        (["ids=[[1, 2, 3]]"], "missing input(s) 'text'"),
        (["ids=[[1, 2, 3]]", "ids=[[1, 2, 3]]"], "input 'ids' is given twice"),
        (["ids"], "--input 'ids': write NAME=VALUE"),
    ):
        with pytest.raises(InputError) as info:
            given(MODEL, assignments)
        assert message in str(info.value)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("zero", [False, True], ids=["seeded", "zeros"])
def test_generated_inputs_are_valid_for_every_datatype(datatype: str, zero: bool) -> None:
    spec = TensorSpec("x", datatype, (-1, 4, -1))
    (array,) = generate([spec], batch=3, seed=5, zero=zero).values()
    assert array.shape == (3, 4, 1)
    decoded = _round_trip(spec, array)
    assert decoded.shape == (3, 4, 1)
    again = generate([spec], batch=3, seed=5, zero=zero)["x"]
    assert np.array_equal(again, array)  # a seed repeats
    if zero:
        assert not any(decoded.ravel().tolist())


def test_generated_values_depend_on_the_seed_and_the_batch_is_checked() -> None:
    spec = [TensorSpec("x", "FP32", (-1, 8))]
    assert not np.array_equal(generate(spec, seed=1)["x"], generate(spec, seed=2)["x"])
    assert generate(spec)["x"].shape == (1, 8)
    with pytest.raises(InputError, match="--batch must be at least 1"):
        generate(spec, batch=0)


@pytest.mark.parametrize(
    ("words", "flag", "expected"),
    [
        ([], None, ("house_price", [])),
        (["1800", "1200"], None, ("house_price", [1800.0, 1200.0])),
        (["digits"], None, ("digits", [])),
        (["house_price", "-5"], "house_price", ("house_price", [-5.0])),
        (["7"], "1800", ("1800", [7.0])),
    ],
)
def test_model_and_values(words: list[str], flag: str | None, expected: Any) -> None:
    assert model_and_values(words, flag, "house_price") == expected


def test_model_and_values_refusals() -> None:
    with pytest.raises(InputError, match="model 'a' and --model 'b' disagree"):
        model_and_values(["a"], "b", "house_price")
    with pytest.raises(InputError, match="input values must be numbers, not 'x'"):
        model_and_values(["m", "1", "x"], None, "house_price")


def test_small_outputs_print_whole_and_big_ones_summarised() -> None:
    assert describe("y", "FP32", np.array([[1.5], [2]], dtype=np.float32)) == (
        "y FP32 [2, 1]: [[1.5], [2. ]]"
    )
    assert describe("s", "BYTES", np.array([b"a", b"b"], dtype=object)) == "s BYTES [2]: ['a', 'b']"
    big = describe("z", "INT32", np.arange(100, dtype=np.int32).reshape(10, 10))
    assert big == "z INT32 [10, 10]: 100 values, first 0, 1, 2, 3, 4, 5, 6, 7, ... (min 0, max 99)"


def test_outputs_are_written_as_npy(tmp_path: Path) -> None:
    outputs = {
        "dense/out:0": np.arange(6, dtype=np.float16).reshape(2, 3),
        "words": np.array([b"a", b"bc"], dtype=object),
    }
    paths = write_outputs(outputs, tmp_path / "new")
    assert [p.name for p in paths] == ["dense_out_0.npy", "words.npy"]
    assert np.array_equal(np.load(paths[0]), outputs["dense/out:0"])
    assert np.load(paths[0]).dtype == np.float16
    assert np.load(paths[1]).tolist() == [b"a", b"bc"]
