"""ONNX Runtime service: serves the `model.onnx` exports other frameworks' services write into
their repositories, as a framework of its own ("onnx"). It trains nothing."""

from __future__ import annotations

from onnx_service.backend import OnnxBackend

__all__ = ["OnnxBackend"]
