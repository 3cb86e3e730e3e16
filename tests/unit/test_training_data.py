"""Planning a training order: defaults come from the architecture, the data is checked against
it, and every mistake is refused with a message that names it (the gRPC tests cover the same
refusals end to end; the corners are cheaper here)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.backend.architectures import ARCHITECTURES, parameter_count
from serving.errors import InvalidInput, NotFound, ResourceExhausted
from serving.training.data import (
    MAX_SEED,
    BuiltinData,
    CsvData,
    InlineData,
    TrainingLimits,
    TrainOrder,
    TrainPlan,
    plan_training,
)

X10 = np.arange(10, dtype=np.float32).reshape(-1, 1)
LINE = InlineData(X10, 3 * X10 + 1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "house.csv").write_text(
        " size , age ,price\n1,10,7\n2,20,9\n3,30,11\n4,40,13\n5,50,15\n"
    )
    (directory / "target_first.csv").write_text("price,size\n7,1\n9,2\n11,3\n")
    (directory / "text.csv").write_text("size,price\n1,7\ntwo,9\n")
    (directory / "ragged.csv").write_text("size,price\n1,7\n2\n")
    (directory / "header_only.csv").write_text("size,price\n")
    (directory / "one_column.csv").write_text("price\n1\n2\n")
    (tmp_path / "outside.csv").write_text("size,price\n1,2\n2,4\n")
    (directory / "link.csv").symlink_to(tmp_path / "outside.csv")
    return directory


def _plan(
    data_dir: Path, architecture: str = "linear", dataset: Any = LINE, **kw: Any
) -> TrainPlan:
    order = TrainOrder(model_name="m", architecture=architecture, dataset=dataset, **kw)
    return plan_training(order, data_dir)


def _refused(data_dir: Path, match: str, **kw: Any) -> None:
    with pytest.raises(InvalidInput, match=match):
        _plan(data_dir, **kw)


# ---- defaults and shapes ----


@pytest.mark.parametrize(
    ("architecture", "dataset", "names"),
    [
        ("linear", "house_price", ("size_sqft", "price_k", 0)),
        ("mlp", "house_features", ("features", "price_k", 0)),
        ("cnn", "digits", ("image", "probabilities", 10)),
    ],
)
def test_builtin_plans_take_the_architecture_defaults(
    data_dir: Path, architecture: str, dataset: str, names: tuple[str, str, int]
) -> None:
    plan = _plan(data_dir, architecture, BuiltinData(dataset))
    arch = ARCHITECTURES[architecture]
    assert (plan.epochs, plan.batch_size, plan.learning_rate) == (
        arch.epochs,
        arch.batch_size,
        arch.learning_rate,
    )
    assert (plan.optimizer, plan.seed, plan.validation_split) == ("adam", 0, 0.2)
    assert plan.hyperparameters == {
        "epochs": arch.epochs,
        "batch_size": arch.batch_size,
        "learning_rate": arch.learning_rate,
        "optimizer": "adam",
        "seed": 0,
        "validation_split": 0.2,
    }
    assert (plan.input_name, plan.output_name, plan.num_classes) == names
    assert plan.dataset == dataset
    assert plan.x_test is not None and len(plan.x_test) > 0
    assert len(plan.x_val) == pytest.approx(0.2 * (len(plan.x) + len(plan.x_val)), abs=1)


def test_inline_regression_rows_are_split_for_validation(data_dir: Path) -> None:
    plan = _plan(data_dir, seed=3, validation_split=0.3, epochs=7, optimizer="sgd")
    assert (len(plan.x), len(plan.x_val)) == (7, 3)
    assert plan.x.dtype == np.float32 and plan.y.shape == (7, 1)
    # Rows stay paired through the split.
    assert np.array_equal(plan.y, 3 * plan.x + 1)
    assert np.array_equal(plan.y_val, 3 * plan.x_val + 1)
    assert (plan.input_name, plan.output_name, plan.dataset) == ("input", "output", "inline")
    assert plan.x_test is None and plan.y_test is None
    assert (plan.epochs, plan.optimizer, plan.seed) == (7, "sgd", 3)


def test_no_validation_split(data_dir: Path) -> None:
    plan = _plan(data_dir, validation_split=0.0)
    assert (len(plan.x), len(plan.x_val)) == (10, 0)


def test_regression_targets_may_be_flat(data_dir: Path) -> None:
    plan = _plan(data_dir, dataset=InlineData(X10, (3 * X10 + 1).reshape(-1)), validation_split=0)
    assert plan.y.shape == (10, 1)


def test_wide_regression_targets_are_refused_not_reshaped(data_dir: Path) -> None:
    # [5, 2] targets hold 10 numbers; reshaped to [10, 1] they would pair each row of x with
    # another row's target.
    _refused(
        data_dir,
        r"targets must have shape \[N, 1\], got \[5, 2\]",
        dataset=InlineData(X10, (3 * X10 + 1).reshape(5, 2)),
    )


def test_inline_classification(data_dir: Path) -> None:
    images = np.zeros((6, 4, 4, 1), dtype=np.float32)
    plan = _plan(
        data_dir,
        "cnn",
        InlineData(images, np.array([[0], [1], [2], [0], [1], [2]], dtype=np.float32)),
        validation_split=0,
    )
    assert plan.y.dtype == np.int64 and plan.y.shape == (6,)
    assert (plan.num_classes, plan.output_name) == (3, "probabilities")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 1.5, 0, 1], "whole numbers"),
        ([0, 0, 0, 0], "at least 2 classes"),
        ([0, -1, 0, 1], r"integers in \[0, 2\)"),
        ([[0, 1], [1, 0]], r"targets must have shape \[N\]"),
    ],
)
def test_bad_class_labels(data_dir: Path, labels: list[float], match: str) -> None:
    images = np.zeros((4, 4, 4, 1), dtype=np.float32)
    _refused(
        data_dir, match, architecture="cnn", dataset=InlineData(images, np.array(labels, "f4"))
    )


# ---- refusals ----


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"architecture": "rnn"}, r"unknown architecture 'rnn' \(supported: linear, mlp, cnn\)"),
        ({"dataset": None}, "names no dataset"),
        ({"dataset": BuiltinData("mnist")}, "unknown dataset 'mnist'"),
        ({"dataset": BuiltinData("")}, "unknown dataset ''"),
        ({"architecture": "cnn", "dataset": BuiltinData("house_price")}, "is for regression"),
        ({"architecture": "mlp", "dataset": BuiltinData("digits")}, "is for classification"),
        ({"dataset": BuiltinData("house_features")}, "'linear' takes one feature, got 6"),
        ({"dataset": InlineData(X10[:0], X10[:0])}, "inline data is empty"),
        ({"dataset": InlineData(X10[:1], X10[:1])}, "at least 2 training rows"),
        ({"dataset": InlineData(X10, X10[:9])}, "inputs have 10 rows but targets have 9"),
        ({"dataset": InlineData(X10.reshape(-1), X10)}, "inputs of rank 2"),
        ({"validation_split": 0.9, "dataset": InlineData(X10[:2], X10[:2])}, "no training rows"),
        ({"epochs": 0}, "epochs must be between 1 and"),
        ({"epochs": 100_001}, "epochs must be between 1 and 100000"),
        ({"batch_size": -3}, "batch_size must be between 1 and"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite positive number"),
        ({"learning_rate": float("-inf")}, "learning_rate must be a finite positive number"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"validation_split": float("nan")}, "validation_split must be in"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"seed": MAX_SEED + 1}, "seed must be between 0 and"),
    ],
)
def test_refused(data_dir: Path, kw: dict[str, Any], match: str) -> None:
    _refused(data_dir, match, **kw)


@pytest.mark.parametrize("column", [0, 1])
def test_non_finite_values_are_refused(data_dir: Path, column: int) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x, y = X10.copy(), 3 * X10 + 1
        (x, y)[column][4, 0] = bad
        what = ("inputs", "targets")[column]
        _refused(data_dir, f"{what} contain NaN or infinite values", dataset=InlineData(x, y))


def test_the_largest_seed_is_accepted(data_dir: Path) -> None:
    assert _plan(data_dir, seed=MAX_SEED).seed == MAX_SEED


@pytest.mark.parametrize("name", ["", "a/b", "..", "../m", ".hidden", "x" * 129])
def test_bad_model_names(data_dir: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        plan_training(TrainOrder(model_name=name, architecture="linear", dataset=LINE), data_dir)


# ---- CSV ----


def test_csv_defaults_every_other_column_to_features_and_the_last_to_target(
    data_dir: Path,
) -> None:
    plan = _plan(data_dir, "mlp", CsvData("house.csv"), validation_split=0)
    assert plan.dataset == "csv:house.csv"
    # Rows come shuffled (the split permutes them), each with its own target.
    assert sorted(plan.x.tolist()) == [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]
    assert np.array_equal(plan.y, 2 * plan.x[:, :1] + 5)


def test_csv_explicit_columns(data_dir: Path) -> None:
    plan = _plan(data_dir, dataset=CsvData("target_first.csv", ("size",), "price"), seed=0)
    assert np.array_equal(plan.y, 2 * plan.x + 5)
    plan = _plan(data_dir, dataset=CsvData("house.csv", ("age",), "size"), validation_split=0)
    assert np.array_equal(plan.y * 10, plan.x)


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        (CsvData(""), "names no path"),
        (CsvData("house.csv", ("size", "rooms")), r"no column\(s\) rooms \(columns: size, age"),
        (CsvData("house.csv", (), "value"), r"no column\(s\) value"),
        (CsvData("text.csv"), "row 3, column 'size': 'two' is not a number"),
        (CsvData("ragged.csv"), "row 3 has 1 fields, the header 2"),
        (CsvData("header_only.csv"), "at least one row"),
        (CsvData("one_column.csv"), "no feature columns"),
        (CsvData("../outside.csv"), "outside the data directory"),
        (CsvData("sub/../../outside.csv"), "outside the data directory"),
        (CsvData("/etc/passwd"), "outside the data directory"),
        (CsvData("link.csv"), "outside the data directory"),
    ],
)
def test_bad_csv(data_dir: Path, dataset: CsvData, match: str) -> None:
    _refused(data_dir, match, dataset=dataset)


def test_absolute_path_inside_the_data_dir_is_still_refused(data_dir: Path) -> None:
    _refused(data_dir, "outside the data directory", dataset=CsvData(str(data_dir / "house.csv")))


def test_missing_csv_is_not_found(data_dir: Path) -> None:
    with pytest.raises(NotFound, match=r"no CSV file 'nope\.csv'"):
        _plan(data_dir, dataset=CsvData("nope.csv"))
    with pytest.raises(InvalidInput, match=r"'\.' is a directory; name a CSV file in it"):
        _plan(data_dir, dataset=CsvData("."))


def test_symlink_within_the_data_dir_is_followed(data_dir: Path) -> None:
    os.symlink(data_dir / "target_first.csv", data_dir / "alias.csv")
    plan = _plan(data_dir, dataset=CsvData("alias.csv", ("size",), "price"))
    assert np.array_equal(plan.y, 2 * plan.x + 5)


# ---- CSV files a client can get wrong: each is INVALID_ARGUMENT naming the fix ----


def _write(directory: Path, name: str, content: str | bytes) -> str:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return name


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "latin1.csv",
            b"size,price\n1,7\n2,9\n" + "caf\xe9,1\n".encode("latin-1"),
            "is not UTF-8 text .*save it as UTF-8",
        ),
        (
            "big_field.csv",
            "size,price\n1,7\n" + "2," + "9" * 131_073 + "\n",
            "line 3: a field is longer than 131072 characters",
        ),
        ("quote.csv", 'size,price\n1,7\n"2,9\n3,11\n', "row 4 has 1 fields, the header 2"),
        ("empty.csv", "", "is empty; it needs a header row"),
        ("blank.csv", "\n\n", "is empty; it needs a header row"),
        ("ragged_long.csv", "size,price\n1,7\n2,9,4\n", "row 3 has 3 fields, the header 2"),
        (
            "nan_label.csv",
            "size,price\n1,7\n2,nan\n",
            "row 3, column 'price': 'nan' is not a finite",
        ),
        ("inf_input.csv", "size,price\n1,7\n-inf,9\n", "row 3, column 'size': '-inf' is not a fin"),
        ("huge.csv", "size,price\n1,7\n1e999,9\n", "'1e999' is not a finite number"),
        ("twice.csv", "size,size,price\n1,2,7\n2,3,9\n", "names column 'size' more than once"),
        ("control.csv", "size,price\n1,7\n\x1b[31m,9\n", r"'\\x1b\[31m' is not a number"),
    ],
)
def test_bad_csv_content(data_dir: Path, name: str, content: str | bytes, match: str) -> None:
    _refused(data_dir, match, dataset=CsvData(_write(data_dir, name, content)))


def test_the_target_may_not_also_be_a_feature(data_dir: Path) -> None:
    _refused(
        data_dir,
        "column 'price' is both a feature and the target",
        dataset=CsvData("house.csv", ("size", "price"), "price"),
    )


def test_a_long_text_is_quoted_short(data_dir: Path) -> None:
    name = _write(data_dir, "long_text.csv", "size,price\n1,7\n" + "x" * 5000 + ",9\n")
    with pytest.raises(InvalidInput) as caught:
        _plan(data_dir, dataset=CsvData(name))
    assert "'xxxxxxxx" in caught.value.message and len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("house\x00.csv", r"CSV path 'house\\x00.csv' contains a NUL character"),
        ("x" * 300 + ".csv", "cannot be used: File name too long"),
        ("house.csv/inner.csv", "cannot be used: Not a directory|no CSV file"),
        ("loop.csv", "loop of symbolic links|cannot be used"),
    ],
)
def test_bad_csv_path(data_dir: Path, path: str, match: str) -> None:
    (data_dir / "loop.csv").symlink_to(data_dir / "loop.csv")
    with pytest.raises((InvalidInput, NotFound), match=match):
        _plan(data_dir, dataset=CsvData(path))


def test_csv_with_a_byte_order_mark_and_blank_lines(data_dir: Path) -> None:
    # Spreadsheets write a BOM before the header and often a blank last line.
    name = _write(data_dir, "excel.csv", "\ufeffsize,price\r\n1,7\r\n\r\n2,9\r\n3,11\r\n\r\n")
    plan = _plan(data_dir, dataset=CsvData(name, ("size",), "price"), validation_split=0)
    assert sorted(plan.y.reshape(-1).tolist()) == [7, 9, 11]


# ---- how big a job may be ----

TIGHT = TrainingLimits(
    max_classes=5,
    max_input_values=64,
    max_parameters=20_000,
    max_data_values=400,
    max_batch_values=256,
)


def _limited(
    data_dir: Path,
    exc: type[Exception],
    match: str,
    limits: TrainingLimits = TIGHT,
    **kw: Any,
) -> None:
    order = TrainOrder(model_name="m", **{"architecture": "linear", "dataset": LINE, **kw})
    with pytest.raises(exc, match=match):
        plan_training(order, data_dir, limits)


def _images(n: int, side: int, labels: list[float] | None = None) -> InlineData:
    y = np.array(labels if labels is not None else [i % 2 for i in range(n)], dtype=np.float32)
    return InlineData(np.zeros((n, side, side, 1), dtype=np.float32), y)


def test_class_labels_past_the_limit_are_refused_before_the_cast(data_dir: Path) -> None:
    # The order: a label of 1e9 asked for a 64 x 1e9 final layer.
    images = _images(4, 4, [0, 1, 0, 1e9])
    with pytest.raises(ResourceExhausted, match=r"up to 1000000000, .* at most 1000 .*CLASSES"):
        _plan(data_dir, "cnn", images)
    _limited(
        data_dir,
        ResourceExhausted,
        "at most 5",
        architecture="cnn",
        dataset=_images(6, 4, [0, 1, 2, 3, 4, 5]),
    )
    assert (
        plan_training(
            TrainOrder(model_name="m", architecture="cnn", dataset=_images(5, 4, [0, 1, 2, 3, 4])),
            data_dir,
            TIGHT,
        ).num_classes
        == 5
    )


def test_a_row_past_the_input_limit_is_refused(data_dir: Path) -> None:
    # The order: two 2048 x 2048 images (a 2 GB dense layer); here 9 x 9 > 64 values.
    with pytest.raises(ResourceExhausted, match=r"holds 4194304 values .*INPUT_VALUES"):
        _plan(
            data_dir,
            "cnn",
            InlineData(np.zeros((2, 2048, 2048, 1), np.float32), np.array([0.0, 1.0], np.float32)),
        )
    _limited(
        data_dir, ResourceExhausted, "holds 81 values", architecture="cnn", dataset=_images(2, 9)
    )
    assert plan_training(TrainOrder("m", "cnn", _images(2, 8)), data_dir, TIGHT).x.shape[1:] == (
        8,
        8,
        1,
    )


def test_parameters_past_the_limit_are_refused(data_dir: Path) -> None:
    # mlp on 20 features: 20 * 64 + 64 + 64 * 64 + 64 + 64 + 1 = 5569; on 40: 6849.
    def mlp(features: int) -> InlineData:
        return InlineData(np.zeros((4, features), np.float32), np.zeros((4, 1), np.float32))

    _limited(
        data_dir,
        ResourceExhausted,
        "has 6849 parameters; .* at most 6000",
        replace(TIGHT, max_parameters=6000),
        architecture="mlp",
        dataset=mlp(40),
    )
    limits = replace(TIGHT, max_parameters=5569)
    assert plan_training(TrainOrder("m", "mlp", mlp(20)), data_dir, limits).x.shape == (3, 20)


def test_data_and_batches_past_their_limits_are_refused(data_dir: Path) -> None:
    x = np.zeros((401, 1), np.float32)
    _limited(
        data_dir, ResourceExhausted, "hold 401 values; .* at most 400", dataset=InlineData(x, x)
    )
    x = np.zeros((300, 1), np.float32)
    _limited(
        data_dir, ResourceExhausted, "a batch of 257 rows", dataset=InlineData(x, x), batch_size=257
    )
    assert (
        plan_training(
            TrainOrder("m", "linear", InlineData(x, x), batch_size=256), data_dir, TIGHT
        ).batch_size
        == 256
    )


def test_csv_past_the_limits_is_refused_while_it_is_read(data_dir: Path) -> None:
    wide = _write(
        data_dir,
        "wide.csv",
        ",".join(f"c{i}" for i in range(66)) + "\n" + ",".join("1" * 66) + "\n",
    )
    _limited(
        data_dir,
        ResourceExhausted,
        "has 66 columns; .* at most 64 features",
        architecture="mlp",
        dataset=CsvData(wide),
    )
    rows = _write(data_dir, "rows.csv", "a,b\n" + "1,2\n" * 401)
    _limited(data_dir, ResourceExhausted, "more than 400 feature values", dataset=CsvData(rows))
    many = CsvData("house.csv", tuple(f"c{i}" for i in range(65)), "price")
    _limited(
        data_dir, ResourceExhausted, "names 65 feature columns", architecture="mlp", dataset=many
    )
    line = _write(data_dir, "line.csv", "a,b\n" + "1" * 5000 + ",2\n")
    _limited(data_dir, InvalidInput, "line 2 is longer than 2112 characters", dataset=CsvData(line))


@pytest.mark.parametrize(
    ("architecture", "row", "classes", "count"),
    [
        ("linear", (1,), 0, 2),
        ("mlp", (6,), 0, 6 * 64 + 64 + 64 * 64 + 64 + 64 + 1),
        # digits: 8x8 -> 2x2 after two pools; 160 + 4640 + (128 * 64 + 64) + (64 * 10 + 10)
        ("cnn", (8, 8, 1), 10, 160 + 4640 + 8256 + 650),
        # odd sides round down at each pool: 9 -> 4 -> 2
        ("cnn", (9, 11, 3), 2, (27 * 16 + 16) + 4640 + (2 * 2 * 32 * 64 + 64) + 130),
        (
            "cnn",
            (2048, 2048, 1),
            10**9 + 1,
            160 + 4640 + (512 * 512 * 32 * 64 + 64) + 65 * (10**9 + 1),
        ),
    ],
)
def test_parameter_count(architecture: str, row: tuple[int, ...], classes: int, count: int) -> None:
    assert parameter_count(ARCHITECTURES[architecture], row, classes) == count
