"""What every test run reports first: the CPU and TensorFlow's oneDNN setting, since both
change how TensorFlow's kernels fail (see the Makefile's `test`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_report_header() -> list[str]:
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default)")
    return [f"cpu: {_cpu()}, {os.cpu_count()} cores; TF_ENABLE_ONEDNN_OPTS={onednn}"]
