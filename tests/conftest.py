"""What every test run reports first: the CPU and TensorFlow's oneDNN setting, since both
change how TensorFlow's kernels fail (see the Makefile's `test`)."""

from __future__ import annotations

import os

from serving.machine import cpu_model


def pytest_report_header() -> list[str]:
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default)")
    return [f"cpu: {cpu_model()}, {os.cpu_count()} cores; TF_ENABLE_ONEDNN_OPTS={onednn}"]
