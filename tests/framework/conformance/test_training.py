"""The Backend contract on every backend (`tests/framework/backends.py`): what it registers,
how it trains and reports, and what its models learn (the project's quality bars), on every
runtime. Each backend trains each architecture once per session."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from serving.backend import EPOCH_METRICS, Backend
from serving.backend.architectures import get, signature_for
from serving.errors import InvalidInput
from tests.framework.backends import (
    CLASSIFIERS,
    FRAMEWORKS,
    SUBJECTS,
    TRAINERS,
    Subject,
    Version,
    Versions,
    cases,
    dataset,
    runtime_cases,
    sizes,
    spec_for,
)

pytestmark = pytest.mark.framework


# --- what a backend registers ---------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_registers_its_runtimes_device_and_statistics(subject: Subject, backend: Backend) -> None:
    assert backend.framework == subject.framework
    assert dict(backend.runtimes) == subject.platforms
    assert next(iter(backend.runtimes)) == "native"
    assert not hasattr(backend, "platform")  # platforms are per runtime
    assert isinstance(backend.device, str) and backend.device == "cpu"
    stats = backend.device_stats()
    assert isinstance(stats, Mapping)
    assert dict(stats) == {}  # nothing to report on a CPU


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "architecture"), cases(trains=True))
def test_training_reports_every_epoch_and_the_shared_signature(version: Version) -> None:
    spec = version.spec
    expected = signature_for(
        get(spec.architecture), spec.x, spec.input_name, spec.output_name, spec.num_classes
    )
    assert version.result.signature == expected
    assert version.meta.signature == expected
    assert [epoch for epoch, _ in version.reports] == list(range(1, spec.epochs + 1))
    assert all(set(metrics) == set(EPOCH_METRICS) for _, metrics in version.reports)
    assert all(math.isfinite(value) for _, m in version.reports for value in m.values())
    metrics = dict(version.result.metrics)
    assert metrics.pop("train_seconds") > 0
    assert metrics == version.reports[-1][1]  # the last epoch's


@pytest.mark.parametrize("framework", TRAINERS)
def test_no_validation_rows_means_no_val_metrics(backend: Backend, tmp_path: Path) -> None:
    reports: list[tuple[int, set[str]]] = []
    spec = spec_for("linear", epochs=2, on_epoch=lambda e, m: reports.append((e, set(m))))
    result = backend.train(replace(spec, x_val=spec.x[:0], y_val=spec.y[:0]), tmp_path)
    assert reports == [(1, {"loss"}), (2, {"loss"})]
    assert not {"val_loss", "val_metric"} & result.metrics.keys()


class _Cancelled(Exception):
    pass


@pytest.mark.parametrize("framework", TRAINERS)
def test_an_exception_from_on_epoch_stops_training(backend: Backend, tmp_path: Path) -> None:
    seen: list[int] = []
    cancelled = _Cancelled("stop at epoch 2")

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise cancelled

    with pytest.raises(_Cancelled) as raised:
        backend.train(spec_for("mlp", on_epoch=on_epoch), tmp_path)
    assert raised.value is cancelled  # unchanged
    assert seen == [1, 2]
    assert not any(tmp_path.iterdir())  # nothing saved


@pytest.mark.parametrize("framework", TRAINERS)
@pytest.mark.parametrize("architecture", ["linear", "mlp"])
def test_same_seed_gives_the_same_model(
    backend: Backend, version: Version, architecture: str, tmp_path: Path
) -> None:
    reports: list[tuple[int, dict[str, float]]] = []
    backend.train(
        replace(version.spec, on_epoch=lambda e, m: reports.append((e, dict(m)))), tmp_path
    )
    again = backend.load(tmp_path, architecture)
    x = dataset(architecture).x_test
    np.testing.assert_array_equal(version.predict(again, x), version.answers(backend, "native", x))
    again.close()
    assert reports == version.reports


@pytest.mark.parametrize("framework", TRAINERS)
def test_sgd_trains_linear(subject: Subject, backend: Backend, tmp_path: Path) -> None:
    spec = spec_for("linear", optimizer="sgd", epochs=50)
    result = backend.train(spec, tmp_path)
    model = backend.load(tmp_path, "linear")
    answer = model.predict({spec.input_name: sizes([1800.0])})[spec.output_name]
    assert answer[0, 0] == pytest.approx(360.0, abs=1.0)
    model.close()
    assert result.metrics["loss"] < 0.01 or not subject.measures


@pytest.mark.parametrize("framework", TRAINERS)
def test_the_cpu_device_trains(backend: Backend, tmp_path: Path) -> None:
    epochs: list[int] = []
    backend.train(
        spec_for("linear", device="cpu", epochs=2, on_epoch=lambda e, m: epochs.append(e)), tmp_path
    )
    assert epochs == [1, 2]


@pytest.mark.parametrize("framework", TRAINERS)
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CUDA"])
def test_an_unknown_device_is_invalid_input(backend: Backend, device: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        backend.train(spec_for("linear", device=device, epochs=1), tmp_path)


@pytest.mark.parametrize("framework", TRAINERS)
def test_an_unknown_architecture_is_invalid_input(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="linear"):
        backend.train(replace(spec_for("linear"), architecture="transformer"), tmp_path)


# --- what the models learn (the project's quality bars) -------------------------------------


@pytest.mark.parametrize(("framework", "runtime"), runtime_cases())
def test_linear_answers_360_on_every_runtime(
    backend: Backend, linear: Version, runtime: str
) -> None:
    """Three sizes, not one: a TFLite export converted from the SavedModel itself (rather
    than its frozen graph) read its variables as garbage, the same price for every size."""
    answers = linear.answers(backend, runtime, sizes([600.0, 1800.0, 2700.0]))
    assert answers.shape == (3, 1) and answers.dtype == np.float32
    np.testing.assert_allclose(answers[:, 0], [120.0, 360.0, 540.0], atol=1.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_mlp_beats_the_rmse_bar(
    versions: Versions,
    backend: Backend,
    framework: str,
    record_property: Callable[[str, object], None],
) -> None:
    mlp, data = versions.get(framework, "mlp"), dataset("mlp")
    error = mlp.answers(backend, "native", data.x_test).astype(np.float64) - data.y_test
    rmse = math.sqrt(float(np.mean(error**2)))
    record_property("test_rmse", rmse)
    assert rmse < 12.0  # the generator's noise alone gives 8
    assert mlp.metrics["test_rmse"] == pytest.approx(rmse, rel=1e-3)  # what the trainer stored


MEASURED_REGRESSIONS = [
    pytest.param(s.framework, a, id=f"{s.framework}-{a}")
    for s in SUBJECTS.values()
    if s.trains and s.measures
    for a in ("linear", "mlp")
]


# The last epoch's bars: loss and val_loss are MSE of the normalised target (in price units
# they would be in the hundreds), val_metric RMSE in thousands.
_BARS = {
    "linear": {"loss": 0.01, "val_loss": 0.01, "val_metric": 1.0},
    "mlp": {"loss": 0.05, "val_metric": 15.0},
}


@pytest.mark.parametrize(("framework", "architecture"), MEASURED_REGRESSIONS)
def test_regression_loss_is_normalised_and_the_metric_in_target_units(version: Version) -> None:
    final = version.reports[-1][1]
    for key, bar in _BARS[version.architecture].items():
        assert final[key] < bar, key
    if version.architecture == "mlp":  # linear's val_loss (about 1e-11) is float32 noise
        # RMSE in thousands = std of the training target x sqrt(MSE of the normalised target).
        y_std = float(np.std(version.spec.y))
        assert final["val_metric"] == pytest.approx(y_std * math.sqrt(final["val_loss"]), rel=1e-3)


@pytest.mark.parametrize("framework", CLASSIFIERS)
def test_cnn_classifies_held_out_digits(
    versions: Versions,
    subject: Subject,
    backend: Backend,
    framework: str,
    record_property: Callable[[str, object], None],
) -> None:
    cnn, data = versions.get(framework, "cnn"), dataset("cnn")
    probabilities = cnn.answers(backend, "native", data.x_test)
    assert probabilities.shape == (len(data.x_test), 10)
    assert probabilities.dtype == np.float32
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == data.y_test))
    record_property("test_accuracy", accuracy)
    assert accuracy >= 0.95
    if subject.trains:
        final = cnn.reports[-1][1]
        assert 0.95 <= final["val_metric"] <= 1.0  # accuracy
        assert 0.0 < final["loss"] < 0.5  # cross-entropy: ln(10) = 2.3 for equal guesses
        assert cnn.reports[0][1]["loss"] > final["loss"]
