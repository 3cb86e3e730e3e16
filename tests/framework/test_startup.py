"""A service started with a setting this machine cannot honour exits at once with one clear
line (no traceback), so an operator or an orchestrator sees why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.framework


def test_a_cuda_service_without_a_gpu_exits_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = {**os.environ, "TWINSERVE_DEVICE": "cuda", "TWINSERVE_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "torch_service", "serve", "--model-repository", str(tmp_path)]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert "cannot start: device 'cuda' requested but no CUDA device" in done.stderr
    assert "Traceback" not in done.stderr
