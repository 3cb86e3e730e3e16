"""Which GPU cells can run here, and why not.

Without an NVIDIA device node there is no GPU to find, and the reason is known at once (with
what the installed builds say, read from their metadata). Otherwise each library is asked in
a subprocess of its own, so the load test never imports TensorFlow or PyTorch (a container
pointed at remote endpoints need not have them), and the probes run while services start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from loadtest.targets import KNOWN

__all__ = ["GPU_DEVICES", "DeviceProbe", "gpu_unavailable"]

GPU_DEVICES = ("cuda",)  # spelled as the services' device setting; also "cuda:N"

# Each prints a JSON string (why no GPU is usable) or null (one is).
_PROBES = {
    "torch": (
        "import json, torch\n"
        "if torch.cuda.is_available(): print('null')\n"
        "elif torch.version.cuda is None:\n"
        "    print(json.dumps(f'this PyTorch build ({torch.__version__}) has no CUDA support'))\n"
        "else: print(json.dumps(f'PyTorch {torch.__version__} finds no usable CUDA device'))\n"
    ),
    "tensorflow": (
        "import json, tensorflow as tf\n"
        "gpus = tf.config.list_physical_devices('GPU')\n"
        "print('null' if gpus else json.dumps(f'TensorFlow {tf.__version__} sees no GPU'))\n"
    ),
    "onnxruntime": (
        "import json, onnxruntime as ort\n"
        "p = ort.get_available_providers()\n"
        "print('null' if 'CUDAExecutionProvider' in p else json.dumps(\n"
        "    f'ONNX Runtime {ort.__version__} has no CUDAExecutionProvider (only '\n"
        "    + ', '.join(p) + '; the GPU build is onnxruntime-gpu)'))\n"
    ),
}
_LABELS = {"torch": "PyTorch", "tensorflow": "TensorFlow", "onnxruntime": "ONNX Runtime"}


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _no_gpu_reasons() -> dict[str, str | None]:
    """Reasons without importing anything, for a machine with no NVIDIA device node."""
    base = "no NVIDIA GPU on this machine (no /dev/nvidia0)"
    torch = _version("torch")
    return {
        "torch": base
        + (
            f"; this PyTorch build ({torch}) has no CUDA support"
            if torch and "+cpu" in torch
            else ""
        ),
        "tensorflow": base
        + ("; tensorflow-cpu is installed" if _version("tensorflow-cpu") else ""),
        "onnxruntime": base
        + ("" if _version("onnxruntime-gpu") else "; the onnxruntime build is CPU-only"),
    }


class DeviceProbe:
    """Starts the probes at construction; `reasons()` waits for them."""

    def __init__(self, device_node: Path = Path("/dev/nvidia0")) -> None:
        self._reasons: dict[str, str | None] | None = None
        self._running: dict[str, subprocess.Popen[str]] = {}
        if not device_node.exists():
            self._reasons = _no_gpu_reasons()
            return
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._running = {
            name: subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
            for name, code in _PROBES.items()
        }

    def reasons(self) -> dict[str, str | None]:
        """Library -> why it cannot use a GPU here, or None when it can."""
        if self._reasons is None:
            self._reasons = {}
            for name, process in self._running.items():
                out, err = process.communicate(timeout=120)
                if process.returncode == 0:
                    self._reasons[name] = json.loads(out.strip().splitlines()[-1])
                else:
                    last = (err.strip().splitlines() or ["no output"])[-1]
                    self._reasons[name] = f"cannot import {name}: {last}"
        return self._reasons


def gpu_unavailable(framework: str, runtime: str, reasons: dict[str, str | None]) -> str | None:
    """Why a (framework, runtime) cell cannot run on a GPU here, or None if it can. A runtime
    needs its service to start on the GPU (the libraries devtools/frameworks.json lists for
    it must see one) and, for ONNX, ONNX Runtime's CUDA provider."""
    known = KNOWN[framework]
    if runtime in known.cpu_only_runtimes:
        return f"{framework}'s {runtime} runtime runs on the CPU only"
    needed = [*known.gpu_libraries, *(["onnxruntime"] if runtime == "onnx" else [])]
    needed = list(dict.fromkeys(needed))
    missing = [f"{_LABELS[name]}: {reasons[name]}" for name in needed if reasons.get(name)]
    return "; ".join(missing) or None
