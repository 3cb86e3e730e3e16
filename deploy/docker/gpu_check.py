"""Checks a GPU image at build time, where there is no GPU: ONNX Runtime is the CUDA build alone
and its CUDA provider finds every library it links (CUDA, cuBLAS, cuFFT, cuRAND, cuDNN from the
framework's nvidia-* wheels, registered with ldconfig), so CUDAExecutionProvider starts on a GPU
node instead of the service refusing ONNX on `cuda`. The driver's own library (libcuda), which
the NVIDIA container runtime mounts at run time, is the one allowed to be missing.

    python gpu_check.py          # exit 0, or the reasons on stderr and exit 1

Standard library and onnxruntime only. Run by the GPU Dockerfiles' last stage.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

# Mounted by the NVIDIA container runtime with the driver, never shipped in an image.
DRIVER_LIBRARIES = re.compile(r"^lib(cuda|nvidia-[a-z-]+)\.so")


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def unresolved(library: Path) -> list[str]:
    """The shared libraries `library` links that the dynamic loader cannot find."""
    listing = subprocess.run(
        ["ldd", str(library)], capture_output=True, text=True, check=False
    ).stdout
    missing = [line.split()[0] for line in listing.splitlines() if "not found" in line]
    return [name for name in missing if not DRIVER_LIBRARIES.match(name)]


def problems() -> list[str]:
    found = []
    if installed("onnxruntime"):
        found.append(
            "the CPU build `onnxruntime` is installed: it and onnxruntime-gpu write the same"
            " `onnxruntime` package, whichever was installed last wins"
        )
    if not installed("onnxruntime-gpu"):
        found.append("onnxruntime-gpu is not installed")
        return found
    import onnxruntime  # noqa: PLC0415  (after the checks that say why it may be the wrong one)

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        found.append(f"ONNX Runtime offers no CUDAExecutionProvider ({', '.join(providers)})")
    capi = Path(onnxruntime.__file__).parent / "capi"
    cuda = sorted(capi.glob("libonnxruntime_providers_cuda.so*"))
    if not cuda:
        found.append(f"no libonnxruntime_providers_cuda.so in {capi}")
    for library in cuda:
        missing = unresolved(library)
        if missing:
            found.append(
                f"{library.name} links libraries the loader cannot find: {', '.join(missing)}"
                " (a CUDA major other than the framework's wheels? pick the onnxruntime-gpu"
                " line built for it: ONNXRUNTIME_GPU)"
            )
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"gpu_check: {problem}", file=sys.stderr)
    if not found:
        print("gpu_check: onnxruntime-gpu alone, CUDAExecutionProvider and its libraries found")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
