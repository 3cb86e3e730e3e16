"""Planning a training order: defaults come from the architecture, the data is checked against
it, and every mistake is refused with a message that names it (the gRPC tests cover the same
refusals end to end; the corners are cheaper here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.architectures import ARCHITECTURES
from serving.errors import InvalidInput, NotFound
from serving.training_data import (
    MAX_SEED,
    BuiltinData,
    CsvData,
    InlineData,
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
    images = np.zeros((6, 2, 2, 1), dtype=np.float32)
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
    images = np.zeros((4, 2, 2, 1), dtype=np.float32)
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
    with pytest.raises(NotFound):
        _plan(data_dir, dataset=CsvData("."))  # a directory is no CSV file


def test_symlink_within_the_data_dir_is_followed(data_dir: Path) -> None:
    os.symlink(data_dir / "target_first.csv", data_dir / "alias.csv")
    plan = _plan(data_dir, dataset=CsvData("alias.csv", ("size",), "price"))
    assert np.array_equal(plan.y, 2 * plan.x + 5)
