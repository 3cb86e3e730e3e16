"""The framework-free parameter count that sizes a training job before anything is built
(`serving.backend.architectures.parameter_count`) is the count each framework's model really has:
a limit checked against the formula is a limit on the model."""

from __future__ import annotations

import numpy as np
import pytest

from serving.backend import TrainSpec
from serving.backend.architectures import ARCHITECTURES, parameter_count

pytestmark = pytest.mark.framework

CASES = [
    ("linear", (1,), 0),
    ("mlp", (6,), 0),
    ("cnn", (8, 8, 1), 10),
    # Odd sides: both frameworks' pooling rounds down, 9 -> 4 -> 2 and 11 -> 5 -> 2.
    ("cnn", (9, 11, 3), 4),
    ("cnn", (4, 4, 2), 3),
]


def _spec(architecture: str, row: tuple[int, ...], classes: int) -> TrainSpec:
    x = np.random.default_rng(0).random((4, *row), dtype=np.float32)
    if classes:
        y = np.arange(4) % classes
        return TrainSpec(
            architecture, x, y, x[:0], y[:0], task="classification", num_classes=classes
        )
    return TrainSpec(architecture, x, x.reshape(4, -1)[:, :1], x[:0], x[:0, :1])


@pytest.mark.parametrize(("architecture", "row", "classes"), CASES)
def test_torch_models_have_the_counted_parameters(
    architecture: str, row: tuple[int, ...], classes: int
) -> None:
    models = pytest.importorskip("torch_service.models")
    module_class = models.ARCHITECTURES[architecture]
    module = module_class(**module_class.kwargs_for((4, *row), classes))
    counted = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert counted == parameter_count(ARCHITECTURES[architecture], row, classes)


@pytest.mark.parametrize(("architecture", "row", "classes"), CASES)
def test_keras_models_have_the_counted_parameters(
    architecture: str, row: tuple[int, ...], classes: int
) -> None:
    models = pytest.importorskip("tf_service.models")
    built = models.ARCHITECTURES[architecture](_spec(architecture, row, classes))
    # Trainable only: the normalisation statistics are adapted, not trained.
    counted = sum(int(np.prod(w.shape)) for w in built.trained.trainable_weights)
    assert counted == parameter_count(ARCHITECTURES[architecture], row, classes)
