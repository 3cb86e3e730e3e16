"""Device placement of the ONNX runtime: a GPU asked for and not usable is refused with the
reason, never run on the CPU instead."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from serving.engine.onnx_model import onnx_providers
from serving.errors import BackendUnavailable, InvalidInput


def test_cpu_is_the_cpu_provider() -> None:
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this ONNX Runtime has CUDA"
)
def test_cuda_without_the_cuda_provider_says_why() -> None:
    with pytest.raises(BackendUnavailable, match=r"no CUDAExecutionProvider.*onnxruntime-gpu"):
        onnx_providers("cuda:0")


def test_unknown_devices_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unsupported device"):
        onnx_providers("gpu0")
