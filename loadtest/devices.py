"""Which GPU cells can run here, and why not.

Without an NVIDIA device node (any /dev/nvidiaN: a container given GPU 3 has only
/dev/nvidia3), or with CUDA_VISIBLE_DEVICES hiding every GPU, there is no GPU to find, and the
reason is known at once (with what the installed builds say, read from their metadata).
Otherwise each library is asked in a subprocess of its own, so the load test never imports
TensorFlow or PyTorch (a container pointed at remote endpoints need not have them), and the
probes run while services start; they inherit CUDA_VISIBLE_DEVICES, as the services do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from loadtest.targets import KNOWN

__all__ = [
    "GPU_DEVICES",
    "DeviceProbe",
    "gpu_libraries",
    "gpu_nodes",
    "gpu_unavailable",
    "hidden_by_env",
]

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


def gpu_nodes(dev: Path = Path("/dev")) -> list[Path]:
    """The NVIDIA GPUs' device nodes under `dev` (nvidia0, nvidia3, ...; not nvidiactl)."""
    try:
        return sorted(p for p in dev.iterdir() if re.fullmatch(r"nvidia[0-9]+", p.name))
    except OSError:  # no such directory: no GPU
        return []


def hidden_by_env(environ: Mapping[str, str]) -> str | None:
    """Why CUDA_VISIBLE_DEVICES leaves no GPU visible, or None (unset, or naming one). CUDA
    reads the list up to its first invalid entry, so "" and "-1" (or "-1,0") mean none."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    first = value.split(",")[0].strip()
    if first.isdigit() or first.startswith(("GPU-", "MIG-")):  # an index or a UUID
        return None
    return f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"


def _no_gpu_reasons(base: str, libraries: Iterable[str]) -> dict[str, str | None]:
    """Reasons without importing anything, where no GPU can be visible (`base` says why)."""
    builds = {
        "torch": ("torch",),
        "tensorflow": ("tensorflow", "tensorflow-cpu"),
        "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    }
    reasons: dict[str, str | None] = {}
    for name in libraries:
        version = _version(*builds[name])
        if version is None:
            reasons[name] = f"{base}; {_LABELS[name]} is not installed"
        elif name == "torch" and "+cpu" in version:
            reasons[name] = f"{base}; this PyTorch build ({version}) has no CUDA support"
        elif name == "tensorflow" and _version("tensorflow-cpu"):
            reasons[name] = f"{base}; tensorflow-cpu is installed"
        elif name == "onnxruntime" and not _version("onnxruntime-gpu"):
            reasons[name] = f"{base}; the onnxruntime build is CPU-only"
        else:
            reasons[name] = base
    return reasons


class DeviceProbe:
    """Starts the probes at construction; `reasons()` waits for them. `dev` is where device
    nodes are looked for, `environ` the environment the services get, `libraries` those to
    ask (the selected frameworks' needs: a host without TensorFlow is not made to import it);
    any other is reported as not probed, never as usable."""

    def __init__(
        self,
        dev: Path = Path("/dev"),
        environ: Mapping[str, str] | None = None,
        libraries: Iterable[str] = tuple(_PROBES),
    ) -> None:
        self._reasons: dict[str, str | None] | None = None
        self._running: dict[str, subprocess.Popen[str]] = {}
        environ = os.environ if environ is None else environ
        wanted = [name for name in _PROBES if name in set(libraries)]
        self._unprobed: dict[str, str | None] = {
            name: "not probed: no selected framework needs it" for name in _PROBES
            if name not in wanted
        }  # fmt: skip
        hidden = hidden_by_env(environ)
        if hidden:
            self._reasons = _no_gpu_reasons(f"no GPU visible ({hidden})", wanted)
        elif not gpu_nodes(dev):
            self._reasons = _no_gpu_reasons(
                f"no NVIDIA GPU on this machine (no {dev}/nvidiaN)", wanted
            )
        if self._reasons is not None:
            self._reasons |= self._unprobed
            return
        env = {**environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._running = {
            name: subprocess.Popen(
                [sys.executable, "-c", _PROBES[name]],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
            for name in wanted
        }

    def reasons(self) -> dict[str, str | None]:
        """Library -> why it cannot use a GPU here, or None when it can."""
        if self._reasons is None:
            self._reasons = dict(self._unprobed)
            for name, process in self._running.items():
                out, err = process.communicate(timeout=120)
                if process.returncode == 0:
                    self._reasons[name] = json.loads(out.strip().splitlines()[-1])
                else:
                    last = (err.strip().splitlines() or ["no output"])[-1]
                    self._reasons[name] = f"cannot import {name}: {last}"
        return self._reasons


def gpu_libraries(frameworks: Iterable[str]) -> list[str]:
    """What `frameworks`' GPU cells need probed: their own libraries, and ONNX Runtime for
    any of them that serves an ONNX runtime."""
    needed: list[str] = []
    for name in frameworks:
        known = KNOWN[name]
        needed += known.gpu_libraries
        if "onnx" in known.runtimes and "onnx" not in known.cpu_only_runtimes:
            needed.append("onnxruntime")
    return list(dict.fromkeys(needed))


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
