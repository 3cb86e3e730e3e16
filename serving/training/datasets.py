"""Built-in datasets, generated or bundled (no downloads), each with a held-out test split.

- `house_price`: sizes 500..2750 sq ft, price = 0.2 x size (thousands). The seed data.
- `house_features`: six features -> price (thousands), deterministic generator with noise:
      price = 0.15 size + 12 bedrooms + 18 bathrooms - 1.2 age + 0.004 lot
              + 60 exp(-distance / 5) + N(0, 8)
  The distance term is non-linear, so an MLP beats a linear model; RMSE near 8 is the floor.
- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images), scaled to [0, 1],
  shape [N, 8, 8, 1], labels 0..9, stratified split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from serving.errors import InvalidInput

__all__ = [
    "BUILTIN",
    "HOUSE_FEATURES",
    "HOUSE_PRICE_INPUT",
    "HOUSE_PRICE_OUTPUT",
    "Dataset",
    "digits",
    "house_features",
    "house_price",
    "load_builtin",
    "validation_split",
]

HOUSE_PRICE_INPUT = "size_sqft"
HOUSE_PRICE_OUTPUT = "price_k"
HOUSE_FEATURES = ("size_sqft", "bedrooms", "bathrooms", "age_years", "lot_sqft", "distance_km")


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    task: Literal["regression", "classification"]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_name: str
    output_name: str
    num_classes: int = 0


def house_price(
    n: int = 256, *, seed: int = 0, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """House sizes 500..2750 sq ft and prices in thousands: price = 0.2 x size (+ noise).

    Returns float32 arrays of shape [n, 1].
    """
    rng = np.random.default_rng(seed)
    size = rng.uniform(500.0, 2750.0, size=(n, 1))
    price = 0.2 * size + rng.normal(0.0, noise, size=(n, 1)) if noise else 0.2 * size
    return size.astype(np.float32), price.astype(np.float32)


def house_features(n: int = 2000, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[n, 6] float32 features (HOUSE_FEATURES order) and [n, 1] float32 prices."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(500.0, 3500.0, n)
    bedrooms = np.clip(np.round(size / 700 + rng.normal(0, 0.7, n)), 1, 6)
    bathrooms = np.clip(np.round(bedrooms / 2 + rng.normal(0, 0.5, n)), 1, 4)
    age = rng.uniform(0.0, 80.0, n)
    lot = rng.uniform(1000.0, 20000.0, n)
    distance = rng.uniform(0.5, 40.0, n)
    price = (
        0.15 * size
        + 12 * bedrooms
        + 18 * bathrooms
        - 1.2 * age
        + 0.004 * lot
        + 60 * np.exp(-distance / 5)
        + rng.normal(0.0, 8.0, n)
    )
    x = np.stack([size, bedrooms, bathrooms, age, lot, distance], axis=1)
    return x.astype(np.float32), price.reshape(-1, 1).astype(np.float32)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """[1797, 8, 8, 1] float32 images in [0, 1] and [1797] int64 labels."""
    # Imported here: scikit-learn takes ~0.5 s to import and only this dataset needs it.
    from sklearn.datasets import load_digits  # noqa: PLC0415  (bundled, no download)

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
    return images, bunch.target.astype(np.int64)


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if stratify:
        test = np.concatenate(
            [
                rng.permutation(np.flatnonzero(y == label))[
                    : round(test_fraction * (y == label).sum())
                ]
                for label in np.unique(y)
            ]
        )
    else:
        test = rng.permutation(len(x))[: round(test_fraction * len(x))]
    mask = np.zeros(len(x), dtype=bool)
    mask[test] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val): a seeded random `fraction` of rows for validation."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(fraction * len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _house_price() -> Dataset:
    x, y = house_price(320)
    parts = _split(x, y, 0.2, seed=1, stratify=False)
    return Dataset("house_price", "regression", *parts, HOUSE_PRICE_INPUT, HOUSE_PRICE_OUTPUT)


def _house_features() -> Dataset:
    x, y = house_features()
    parts = _split(x, y, 0.2, seed=1, stratify=False)
    return Dataset("house_features", "regression", *parts, "features", HOUSE_PRICE_OUTPUT)


def _digits() -> Dataset:
    x, y = digits()
    parts = _split(x, y, 0.2, seed=1, stratify=True)
    return Dataset("digits", "classification", *parts, "image", "probabilities", num_classes=10)


BUILTIN: dict[str, Callable[[], Dataset]] = {
    "house_price": _house_price,
    "house_features": _house_features,
    "digits": _digits,
}


def load_builtin(name: str) -> Dataset:
    try:
        return BUILTIN[name]()
    except KeyError:
        known = ", ".join(sorted(BUILTIN))
        raise InvalidInput(f"unknown dataset '{name}' (built-in datasets: {known})") from None
