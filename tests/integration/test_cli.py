"""The `twinserve` command line against a real service: predict, train with progress, jobs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devtools import cli
from serving.app.server import Service
from serving.backend.fake import AffineBackend


@pytest.fixture(scope="module")
def service(
    aio: Any, seeded_repository: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    runs = tmp_path_factory.mktemp("runs")
    with aio.service(seeded_repository(), AffineBackend(), tensorboard_dir=runs) as started:
        yield started


def _run(service: Service, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--url", f"127.0.0.1:{service.port}", *argv])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err


def test_predict_prints_the_answer(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(service, capsys, "predict", "1800", "1200")
    assert code == 0
    assert "house_price v1 (fake): 1800 -> 360.00" in out
    assert "1200 -> 240.00" in out


def test_predict_unknown_model_fails_clearly(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(service, capsys, "predict", "1", "--model", "nope")
    assert code == 1
    assert "error: NOT_FOUND" in out and "nope" in out


def test_train_shows_progress_then_the_stored_version(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(
        service,
        capsys,
        "train",
        "--model",
        "cli_features",
        "--architecture",
        "mlp",
        "--dataset",
        "house_features",
        "--epochs",
        "4",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("job fake-") and "mlp on house_features, 4 epochs" in lines[0]
    bars = [line for line in lines if line.startswith("[")]
    assert len(bars) == 4  # not a terminal: one line an epoch
    assert bars[0].startswith("[" + "#" * 7 + "." * 23 + "] epoch 1/4")
    assert bars[-1].startswith("[" + "#" * 30 + "] epoch 4/4")
    assert "val rmse" in bars[-1] and "samples/s" in bars[-1]
    assert any(line.startswith("stored cli_features version 1 at ") for line in lines)
    assert "test_rmse" in out

    code, out = _run(service, capsys, "jobs", "--model", "cli_features")
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith("fake-")]
    assert "succeeded" in row and "cli_features" in row and "4/4" in row and "v1" in row

    job_id = row.split()[0]
    code, out = _run(service, capsys, "job", job_id, "--watch")
    assert code == 0 and "stored cli_features version 1" in out


def test_train_refused_exits_non_zero(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(
        service, capsys, "train", "--model", "bad", "--architecture", "mlp", "--dataset", "mnist"
    )
    assert code == 1
    assert "INVALID_ARGUMENT" in out and "unknown dataset 'mnist'" in out
