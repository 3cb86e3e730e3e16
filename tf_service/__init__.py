"""TensorFlow backend: trains Keras models and serves them as SavedModels."""

from __future__ import annotations

import os

# TensorFlow's C++ runtime logs banners on import; keep warnings and errors only. setdefault
# lets an operator who exported TF_CPP_MIN_LOG_LEVEL (e.g. to debug) keep their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# After the environment setting, which TensorFlow reads once, at import.
from tf_service.backend import TFBackend

__all__ = ["TFBackend"]
