"""The load test on a host that lacks parts of the stack: only the selected frameworks are
seeded, probed and started (one that cannot start leaves the others measured), any
/dev/nvidiaN counts and CUDA_VISIBLE_DEVICES is honoured, no matplotlib means no plots and a
note, and no hdrhistogram means NumPy's percentiles with the same figures."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from devtools.stack import launch
from loadtest import LoadResult, OutputClose, closed_loop, histogram, plots
from loadtest.devices import DeviceProbe, gpu_libraries, gpu_nodes, hidden_by_env
from loadtest.histogram import SampleHistogram, decode, new_histogram
from loadtest.targets import KNOWN, LocalStack, seed_models, seeders
from serving.pb import inference_pb2 as pb

# --- which frameworks ------------------------------------------------------------------------


def test_only_the_selected_frameworks_repositories_are_seeded() -> None:
    # onnx serves pytorch's repository: pytorch seeds it, tensorflow is left alone.
    assert [f.name for f in seeders(["pytorch", "onnx"])] == ["pytorch"]
    assert [f.name for f in seeders(["onnx"])] == ["pytorch"]
    assert [f.name for f in seeders(["tensorflow"])] == ["tensorflow"]


def test_only_the_selected_frameworks_libraries_are_probed() -> None:
    assert gpu_libraries(["pytorch"]) == ["torch", "onnxruntime"]
    assert gpu_libraries(["onnx"]) == ["onnxruntime"]
    probe = DeviceProbe(Path("/nonexistent"), environ={}, libraries=gpu_libraries(["pytorch"]))
    reasons = probe.reasons()
    assert reasons["tensorflow"] == "not probed: no selected framework needs it"
    assert reasons["torch"] is not None and "no NVIDIA GPU" in reasons["torch"]


def _fake(monkeypatch: pytest.MonkeyPatch, **modules: str) -> None:
    """Makes KNOWN's frameworks run these modules (a fake service stands in for a framework,
    a missing module for one whose library is not installed)."""
    for name, module in modules.items():
        monkeypatch.setitem(KNOWN, name, dataclasses.replace(KNOWN[name], module=module))


FAKE = "tests.integration.fake_service"


def test_a_framework_that_cannot_seed_leaves_the_others_seeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, tensorflow="no_such_module_here", pytorch=FAKE)
    failed = seed_models(tmp_path, tmp_path / "seed.log", ["tensorflow", "pytorch", "onnx"])
    assert set(failed) == {"tensorflow"}
    assert "seeding tensorflow/ failed" in failed["tensorflow"]
    assert list((tmp_path / "pytorch" / "house_price").iterdir())
    # Selected alone, pytorch never runs tensorflow's seeding.
    (tmp_path / "seed.log").unlink()
    assert seed_models(tmp_path / "other", tmp_path / "seed.log", ["pytorch", "onnx"]) == {}
    assert not (tmp_path / "other" / "tensorflow").exists()


def test_a_service_that_cannot_start_leaves_the_others_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(monkeypatch, tensorflow="no_such_module_here", pytorch=FAKE)
    monkeypatch.setenv("FAKE_FRAMEWORK", "pytorch")
    seed_models(tmp_path / "models", tmp_path / "seed.log", ["pytorch"])
    stack = LocalStack(tmp_path / "models", tmp_path / "logs")
    try:
        endpoints = stack.start("cpu", ("tensorflow", "pytorch"), echo=False)
        assert set(endpoints.direct) == {"pytorch"} and endpoints.gateway
        assert set(stack.failures) == {"tensorflow"}
        assert "before listening" in stack.failures["tensorflow"]
    finally:
        stack.stop()


# --- which GPUs ------------------------------------------------------------------------------


def test_any_nvidia_device_node_is_a_gpu(tmp_path: Path) -> None:
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-modeset", "nvidia3", "nvidia12"):
        (tmp_path / name).touch()
    assert [p.name for p in gpu_nodes(tmp_path)] == ["nvidia12", "nvidia3"]
    assert gpu_nodes(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("value", "hidden"),
    [(None, False), ("0", False), ("3,1", False), ("GPU-5d1e", False), ("MIG-GPU-1/2", False),
     ("", True), ("-1", True), ("-1,0", True), (" ", True), ("NoDevFiles", True)],
)  # fmt: skip
def test_cuda_visible_devices_is_honoured(value: str | None, hidden: bool) -> None:
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert (hidden_by_env(environ) is not None) == hidden


def test_hidden_gpus_are_not_probed(tmp_path: Path) -> None:
    (tmp_path / "nvidia3").touch()
    probe = DeviceProbe(tmp_path, environ={"CUDA_VISIBLE_DEVICES": "-1"})
    assert not probe._running
    assert all(
        "CUDA_VISIBLE_DEVICES='-1' hides every GPU" in (r or "") for r in probe.reasons().values()
    )


def test_a_device_node_other_than_nvidia0_is_probed(tmp_path: Path) -> None:
    # /dev/nvidia3 alone (a container given GPU 3): the library is asked, and this CPU
    # build of torch says what it lacks.
    (tmp_path / "nvidia3").touch()
    probe = DeviceProbe(tmp_path, environ=dict(os.environ), libraries=["torch"])
    assert set(probe._running) == {"torch"}
    reason = probe.reasons()["torch"]
    assert reason is not None and "PyTorch" in reason


# --- no matplotlib, no hdrhistogram ----------------------------------------------------------


def _without(module: str, code: str) -> str:
    """Runs `code` in a fresh interpreter where `module` cannot be imported; its stdout."""
    blocked = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_without_matplotlib_no_plots_and_a_note(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\nfrom loadtest import plots\n"
        f"print(plots.plot_all([], Path({str(tmp_path)!r})), plots.unavailable())"
    )
    assert _without("matplotlib", code).startswith("[] plots skipped: matplotlib is not installed")
    assert plots.unavailable() is None  # here it is installed


def test_without_hdrhistogram_the_numpy_fallback_is_used() -> None:
    code = "from loadtest.histogram import new_histogram\nprint(type(new_histogram()).__name__)"
    assert _without("hdrh", code) == "SampleHistogram"


def test_the_fallback_gives_the_figures_hdrhistogram_gives() -> None:
    values = np.random.default_rng(0).lognormal(7, 1, 20_000).astype(int) + 1
    hdr, samples = new_histogram(), SampleHistogram()
    assert type(hdr).__name__ == "HdrHistogram"
    for value in values.tolist():
        hdr.record_value(value)
        samples.record_value(value)
    for p in (50, 90, 99, 99.9, 100):
        exact = samples.get_value_at_percentile(p)
        assert exact == int(np.percentile(values, p, method="inverted_cdf"))
        # HdrHistogram keeps 3 significant digits: within 0.2 % of the exact figure.
        assert hdr.get_value_at_percentile(p) == pytest.approx(exact, rel=2e-3)
    assert samples.get_max_value() == values.max()
    assert samples.get_mean_value() == pytest.approx(hdr.get_mean_value(), rel=1e-3)
    assert sum(s.count_added_in_this_iter_step for s in samples.get_recorded_iterator()) == 20_000
    # Encoded, decoded (a report's histogram_us) and merged, as the pool merges shares.
    again = decode(samples.encode().decode("ascii"))
    again.decode_and_add(samples.encode())
    assert again.get_total_count() == 40_000
    assert again.get_value_at_percentile(50) == samples.get_value_at_percentile(50)
    assert decode(hdr.encode()).get_total_count() == 20_000
    empty = SampleHistogram()
    assert (empty.get_value_at_percentile(99), empty.get_max_value()) == (0, 0)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process = launch("stub", "tests.loadtest.stub_server")
    try:
        yield process.address
    finally:
        process.stop()


def test_a_run_without_hdrhistogram_reports_the_same_fields(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = pb.ModelInferRequest(model_name="ok-fallback")
    request.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1800.0]], np.float32).tobytes())
    right = OutputClose.of("price_k", np.array([[360.0]]), 1.0)

    def run() -> LoadResult:
        return closed_loop(server, request, concurrency=2, requests=300, warmup_s=0.0,
                           checker=right, processes=0)  # fmt: skip

    with_hdr = run()
    monkeypatch.setattr(histogram, "HdrHistogram", None)
    fallback = run()
    assert isinstance(fallback.latency, SampleHistogram)
    assert fallback.ok == 300 == fallback.latency.get_total_count()
    assert set(fallback.to_dict()) == set(with_hdr.to_dict())
    figures = fallback.latency_ms()
    assert set(figures) == set(with_hdr.latency_ms())
    assert 0 < figures["p50"] <= figures["p99"] <= figures["max"]
