"""Trains the seed model (`house_price`) into a repository that lacks it."""

from __future__ import annotations

import logging

import numpy as np

from serving.backend import Backend, TrainSpec
from serving.engine.repository import ModelRepository
from serving.training.datasets import (
    HOUSE_PRICE_INPUT,
    HOUSE_PRICE_OUTPUT,
    house_price,
    validation_split,
)
from serving.training.trainer import train_version

__all__ = ["SEED_MODEL", "seed_repository"]

logger = logging.getLogger(__name__)

SEED_MODEL = "house_price"


def seed_repository(repository: ModelRepository, backend: Backend, *, samples: int = 256) -> bool:
    """Trains `house_price` if the repository has no version of it; True if it trained."""
    if SEED_MODEL in repository.models() and repository.versions(SEED_MODEL):
        return False
    x_train, y_train, x_val, y_val = validation_split(*house_price(samples), 0.2, seed=0)
    spec = TrainSpec(
        architecture="linear",
        x=x_train,
        y=y_train,
        x_val=x_val,
        y_val=y_val,
        input_name=HOUSE_PRICE_INPUT,
        output_name=HOUSE_PRICE_OUTPUT,
    )
    version, _ = train_version(
        repository,
        backend,
        SEED_MODEL,
        spec,
        f"house_price(n={samples})",
        hyperparameters={
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "learning_rate": spec.learning_rate,
            "optimizer": spec.optimizer,
            "seed": spec.seed,
            "validation_split": 0.2,
        },
    )
    model = backend.load(repository.path(SEED_MODEL, version), spec.architecture)
    try:
        prediction = float(
            model.predict({HOUSE_PRICE_INPUT: np.array([[1800.0]], np.float32)})[
                HOUSE_PRICE_OUTPUT
            ][0, 0]
        )
    finally:
        model.close()
    logger.info(
        "trained %s version %d with %s: 1800 sq ft -> %.2f",
        SEED_MODEL,
        version,
        backend.framework,
        prediction,
    )
    return True
