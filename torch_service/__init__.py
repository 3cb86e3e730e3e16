"""PyTorch framework code: the backend the shared server drives, and its architectures."""

from __future__ import annotations

from torch_service.backend import TorchBackend

__all__ = ["TorchBackend"]
