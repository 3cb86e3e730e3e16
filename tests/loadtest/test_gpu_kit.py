"""The GPU host's kit (devtools/gpu_kit.py) on this machine: built for this Python, installed
with pip --no-index into a fresh environment that holds only torch and ONNX Runtime (what the
GPU host brings, linked file by file from this interpreter's), and run.sh's PyTorch matrix
run there on CPU and CUDA: the CPU cells measured, the CUDA cells 'not available' saying why,
TensorFlow nowhere to import. `make gpu-kit` builds the full kit (Python 3.11 and 3.12)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from devtools.gpu_kit import HOST_PROVIDED, build, refused, requirement_lines

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """`names` and everything they require here (extras aside), as installed."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if _key(name) in found:
            continue
        distribution = metadata.distribution(name)
        found[_key(name)] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def host_environment(root: Path, names: list[str]) -> Path:
    """A virtual environment holding exactly `names` and their requirements: each of their
    installed files linked in (no copy of torch's ~1 GB, and no other package of this
    interpreter's, so no TensorFlow). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for distribution in _closure(names):
        for file in distribution.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages; bytecode is rebuilt
            link = site / file
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(Path(str(distribution.locate_file(file))).resolve())
    return python


def test_requirements_pin_once_and_mark_what_differs() -> None:
    pins = {
        "3.11": {"grpcio": "1.81.1", "numpy": "2.4.6"},
        "3.12": {"grpcio": "1.81.1", "numpy": "2.5.5"},
    }
    assert requirement_lines(pins) == [
        "grpcio==1.81.1",
        'numpy==2.4.6 ; python_version == "3.11"',
        'numpy==2.5.5 ; python_version == "3.12"',
    ]


def test_the_kit_refuses_torch_tensorflow_cuda_and_onnxruntime() -> None:
    names = ["torch", "tensorflow-cpu", "nvidia-cublas-cu12", "onnxruntime-gpu", "triton"]
    assert refused([*names, "grpcio", "tritonclient", "typing_extensions"]) == sorted(names)


@pytest.mark.slow
@pytest.mark.framework
@pytest.mark.timeout(900)
def test_the_kit_runs_the_pytorch_matrix_where_there_is_no_tensorflow(tmp_path: Path) -> None:
    started = time.monotonic()
    kit = tmp_path / "kit"
    manifest = build(kit, [PYTHON])
    built = time.monotonic()
    wheels = {_key(name.split("-")[0]) for name in manifest["wheels"]}
    assert {"twinserve", "grpcio", "protobuf", "pydantic", "tensorboardx"} <= wheels
    assert not refused(wheels) and not wheels & set(HOST_PROVIDED)
    assert manifest["total_mb"] < 50
    assert (kit / "INSTALL.md").is_file() and os.access(kit / "run.sh", os.X_OK)

    python = host_environment(tmp_path / "host", ["torch", "onnxruntime", "pip"])
    # Nothing of this machine's but the host's Python: no pip configuration (its indexes and
    # find-links), no PYTHONPATH, a working directory outside the source tree.
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env |= {"PYTHON": str(python), "OUT": "report", "PIP_CONFIG_FILE": os.devnull}
    work = tmp_path / "work"
    work.mkdir()
    probe = "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('torch'))"
    args = ["--models", "house_price", "--concurrency", "1", "--duration", "0.3"]
    args += ["--warmup", "0.1", "--clients", "1"]
    run = subprocess.run(
        ["sh", str(kit / "run.sh"), *args],
        check=False,  # its output goes into the assertion's message
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    ran = time.monotonic()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "gpu-kit check: everything the matrix needs is installed" in run.stdout
    where = subprocess.run(
        [python, "-c", probe],
        cwd=work,
        env={**env, "PYTHONPATH": str(kit / "site")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == "None" and str(tmp_path / "host") in " ".join(where[1:])

    report = json.loads((work / "report" / "report.json").read_text())
    cells = report["cells"]
    assert {c["framework"] for c in cells} == {"echo", "pytorch"}
    cpu = [c for c in cells if c["device"] == "cpu"]
    cuda = [c for c in cells if c["device"] == "cuda"]
    # echo, and native, torchscript and onnx, direct and through the gateway.
    assert len(cpu) == 7 and len(cuda) == 6
    assert {c["status"] for c in cpu} == {"ok"}, [c["reason"] for c in cpu]
    assert all(c["result"]["latency_ms"]["p50"] > 0 for c in cpu)
    assert {c["status"] for c in cuda} == {"not available"}
    assert all("PyTorch: no NVIDIA GPU" in c["reason"] for c in cuda), cuda[0]["reason"]
    assert "tensorflow" not in report["machine"]["libraries"]
    assert report["gpu_probe"]["tensorflow"].startswith("not probed")
    assert any("matplotlib" in note for note in report["notes"])
    assert not list((work / "report").glob("*.png"))
    print(
        f"\ngpu kit: built in {built - started:.0f} s ({manifest['total_mb']} MB), "
        f"installed and run in {ran - built:.0f} s"
    )
