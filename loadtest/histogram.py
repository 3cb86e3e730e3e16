"""Latency histograms in microseconds: HdrHistogram where `hdrhistogram` is installed (the
`loadtest` and `gpu-kit` extras), else every sample kept and summarised with NumPy.

The fallback exists for hosts that cannot install hdrhistogram (it is a C extension): the
figures are the same, exact instead of to HdrHistogram's 3 significant digits, and its
encoding is its own (`decode` reads both). Client processes and the pool run in one
environment, so the two kinds never meet in one merge.
"""

from __future__ import annotations

import base64
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

try:
    from hdrh.histogram import HdrHistogram
except ImportError:  # the NumPy fallback below
    HdrHistogram = None

__all__ = ["HIGHEST_US", "Histogram", "SampleHistogram", "decode", "new_histogram"]

# 1 us .. 1 hour, 3 significant digits (0.1 % resolution) in HdrHistogram.
HIGHEST_US = 3_600_000_000
# Marks the fallback's encoding (HdrHistogram's starts with its own cookie, "HISTF...").
_SAMPLES = b"SAMPLES:"


class Step(Protocol):
    value_iterated_to: int
    count_added_in_this_iter_step: int


class Histogram(Protocol):
    """What the load test uses of HdrHistogram's interface."""

    def record_value(self, value: int) -> Any: ...
    def encode(self) -> bytes: ...
    def decode_and_add(self, encoded: bytes) -> Any: ...
    def get_total_count(self) -> int: ...
    def get_value_at_percentile(self, percentile: float) -> int: ...
    def get_max_value(self) -> int: ...
    def get_mean_value(self) -> float: ...
    def get_recorded_iterator(self) -> Iterator[Step]: ...


@dataclass
class _Step:
    value_iterated_to: int
    count_added_in_this_iter_step: int


class SampleHistogram:
    """Every recorded value (8 bytes each: a minute at 10,000 calls/s is ~5 MB)."""

    def __init__(self) -> None:
        self._values = array("q")

    def _array(self) -> np.ndarray:
        return np.frombuffer(self._values, dtype=np.int64) if self._values else np.zeros(0)

    def record_value(self, value: int) -> bool:
        self._values.append(min(HIGHEST_US, max(1, int(value))))
        return True

    def encode(self) -> bytes:
        return _SAMPLES + base64.b64encode(zlib.compress(self._values.tobytes()))

    def decode_and_add(self, encoded: bytes) -> None:
        if not encoded.startswith(_SAMPLES):
            raise ValueError("not a SampleHistogram encoding: an HdrHistogram needs hdrhistogram")
        self._values.frombytes(zlib.decompress(base64.b64decode(encoded[len(_SAMPLES) :])))

    def get_total_count(self) -> int:
        return len(self._values)

    def get_value_at_percentile(self, percentile: float) -> int:
        """The smallest value that `percentile` % of the values do not exceed, as
        HdrHistogram answers (NumPy's "inverted_cdf"); 0 when empty, like it too."""
        if not self._values:
            return 0
        q = min(100.0, max(0.0, percentile))
        return int(np.percentile(self._array(), q, method="inverted_cdf"))

    def get_max_value(self) -> int:
        return max(self._values, default=0)

    def get_mean_value(self) -> float:
        return float(self._array().mean()) if self._values else 0.0

    def get_recorded_iterator(self) -> Iterator[Step]:
        values, counts = np.unique(self._array(), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            yield _Step(int(value), int(count))


def new_histogram() -> Histogram:
    if HdrHistogram is None:
        return SampleHistogram()
    histogram: Histogram = HdrHistogram(1, HIGHEST_US, 3)
    return histogram


def decode(encoded: str | bytes) -> Histogram:
    """A histogram from either kind's `encode()` (a report's `histogram_us`)."""
    raw = encoded.encode("ascii") if isinstance(encoded, str) else encoded
    histogram: Histogram
    if raw.startswith(_SAMPLES):
        histogram = SampleHistogram()
    elif HdrHistogram is None:
        raise ValueError("an HdrHistogram encoding: reading it needs hdrhistogram installed")
    else:
        histogram = HdrHistogram(1, HIGHEST_US, 3)
    histogram.decode_and_add(raw)
    return histogram
