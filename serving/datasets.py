"""Built-in datasets, generated deterministically (no downloads)."""

from __future__ import annotations

import numpy as np

__all__ = ["HOUSE_PRICE_INPUT", "HOUSE_PRICE_OUTPUT", "house_price"]

HOUSE_PRICE_INPUT = "size_sqft"
HOUSE_PRICE_OUTPUT = "price_k"


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
