"""The matrix and its report, end to end against running endpoints (the stub server answers
house_price like every framework would), and GPU cells on a machine without a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest

from devtools.stack import launch
from loadtest.cli import _parser, _Run, main
from loadtest.devices import DeviceProbe, gpu_unavailable
from loadtest.matrix import RUNTIMES


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    process = launch("stub", "tests.loadtest.stub_server")
    try:
        yield process.address
    finally:
        process.stop()


def test_running_endpoints_give_a_full_report(endpoint: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["--gateway", endpoint, "--service", f"tensorflow={endpoint}"]
    args += ["--service", f"pytorch={endpoint}", "--frameworks", "tensorflow,pytorch"]
    args += ["--concurrency", "1,2", "--duration", "0.2", "--warmup", "0", "--clients", "1"]
    main([*args, "--out", str(out)])

    report = json.loads((out / "report.json").read_text())
    cells = report["cells"]
    assert len(cells) == 2 * 3 * 2 * 2  # frameworks x runtimes x paths x concurrencies
    assert {c["status"] for c in cells} == {"ok"}
    assert all(c["result"]["latency_ms"]["p50"] > 0 for c in cells)
    assert report["settings"]["mode"] == "remote"
    assert report["machine"]["cores"] >= 1
    assert len(report["winners"]) == 4  # (direct, gateway) x 2 concurrencies
    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cells) and float(rows[0]["p99_ms"]) > 0
    markdown = (out / "report.md").read_text()
    assert "## Winners" in markdown and "pytorch/onnx gateway" in markdown
    plots = sorted(out.glob("*.png"))
    assert {p.name.split("-")[0] for p in plots} == {"latency", "throughput", "cpu"}
    for plot in plots:
        assert matplotlib.image.imread(plot).shape[0] > 100  # a real image
        assert f"]({plot.name})" in markdown


def test_a_wrong_or_failing_target_is_reported_not_hidden(endpoint: str, tmp_path: Path) -> None:
    # Only a gateway: the direct cells have no endpoint and say so.
    args = ["--gateway", endpoint, "--frameworks", "pytorch", "--concurrency", "1"]
    main([*args, "--duration", "0.2", "--warmup", "0", "--clients", "1", "--out", str(tmp_path)])
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    direct = [c for c in cells if c["path"] == "direct"]
    assert direct and all(c["status"] == "not available" for c in direct)
    assert "no direct endpoint for pytorch" in direct[0]["reason"]


class NoGpu(DeviceProbe):
    def __init__(self) -> None:
        super().__init__(Path("/nonexistent/nvidia0"))


def test_gpu_cells_say_why_they_did_not_run(tmp_path: Path) -> None:
    reasons = NoGpu().reasons()
    assert all(reasons.values())
    args = _parser().parse_args(
        ["--devices", "cuda", "--concurrency", "1,4", "--out", str(tmp_path)]
    )
    run = _Run(args)
    # No pool: every cell must be decided before anything is loaded or started.
    run.device("cuda", pool=None, probe=NoGpu())  # type: ignore[arg-type]
    # Every framework of devtools/frameworks.json x its runtimes x paths x concurrencies.
    assert len(run.outcomes) == sum(len(r) for r in RUNTIMES.values()) * 2 * 2
    assert {o.cell.target.framework for o in run.outcomes} == set(RUNTIMES)
    assert {o.status for o in run.outcomes} == {"not available"}
    tflite = [o for o in run.outcomes if o.cell.target.runtime == "tflite"]
    assert "CPU only" in tflite[0].reason
    onnx = [o for o in run.outcomes if o.cell.target.runtime == "onnx"]
    assert "ONNX Runtime" in onnx[0].reason and "no NVIDIA GPU" in onnx[0].reason


def test_gpu_reasons_combine_framework_and_onnx_runtime() -> None:
    reasons = {"torch": None, "tensorflow": "no GPU", "onnxruntime": "no CUDA provider"}
    assert gpu_unavailable("pytorch", "native", reasons) is None
    assert gpu_unavailable("pytorch", "onnx", reasons) == "ONNX Runtime: no CUDA provider"
    assert gpu_unavailable("onnx", "native", reasons) == "ONNX Runtime: no CUDA provider"
    assert gpu_unavailable("tensorflow", "onnx", reasons) == (
        "TensorFlow: no GPU; ONNX Runtime: no CUDA provider"
    )


def test_a_gateway_that_requires_a_token_is_loaded_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "models"
    quiet = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}
    # It stands in for tensorflow, and says so in its answers (the matrix checks who answered).
    quiet["FAKE_FRAMEWORK"] = "tensorflow"
    seed = [sys.executable, "-m", "tests.integration.fake_service", "seed"]
    subprocess.run(
        [*seed, "--model-repository", str(repository)],
        check=True,
        env={**os.environ, **quiet},
        timeout=60,
    )
    service = launch(
        "fake", "tests.integration.fake_service", ["--model-repository", str(repository)], env=quiet
    )
    try:
        gateway = launch(
            "gateway",
            "gateway",
            env={
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": service.address,
                "TWINSERVE_GATEWAY_AUTH_TOKENS": '["s3cret"]',
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
        try:
            args = ["--gateway", gateway.address, "--frameworks", "tensorflow"]
            args += ["--concurrency", "1", "--duration", "0.2", "--warmup", "0", "--clients", "1"]

            def native(out: Path) -> dict[str, str]:
                cells = json.loads((out / "report.json").read_text())["cells"]
                (cell,) = [c for c in cells if c["path"] == "gateway" and c["runtime"] == "native"]
                return cell

            monkeypatch.delenv("TWINSERVE_TOKEN", raising=False)
            main([*args, "--out", str(tmp_path / "without")])
            refused = native(tmp_path / "without")
            assert refused["status"] == "not available"
            assert "UNAUTHENTICATED" in refused["reason"]

            monkeypatch.setenv("TWINSERVE_TOKEN", "s3cret")  # as the Kubernetes Job passes it
            main([*args, "--out", str(tmp_path / "with")])
            assert native(tmp_path / "with")["status"] == "ok"
        finally:
            gateway.stop()
    finally:
        service.stop()
