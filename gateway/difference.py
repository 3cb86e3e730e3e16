"""How far two answers to one request are apart: outputs decoded to NumPy, compared by their
largest absolute difference. Used by Compare and by shadow traffic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.pb import inference_pb2 as pb
from serving.protocol.codec import decode_tensor

__all__ = ["Output", "decode_outputs", "disagreement", "max_abs_diff"]


@dataclass(frozen=True, slots=True)
class Output:
    name: str
    datatype: str
    array: np.ndarray

    @property
    def numeric(self) -> bool:
        return self.datatype != "BYTES"


def decode_outputs(response: pb.ModelInferResponse) -> list[Output]:
    """The response's outputs, from raw_output_contents (as the services answer by default)
    or from typed contents (when the request asked for them)."""
    raw = response.raw_output_contents
    decoded: list[Output] = []
    for index, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if raw:
            array = decode_tensor(tensor.name, tensor.datatype, shape, raw[index])
        else:
            fields = tensor.contents.ListFields()
            values = fields[0][1] if fields else ()
            # Numbers are compared as float64 anyway; fromiter fills the array without the
            # list of Python objects (4x the array) that np.asarray would build first.
            dtype = np.dtype(object if tensor.datatype == "BYTES" else np.float64)
            array = np.fromiter(values, dtype=dtype, count=len(values)).reshape(shape)
        decoded.append(Output(tensor.name, tensor.datatype, array))
    return decoded


def max_abs_diff(first: Output, second: Output) -> tuple[float | None, str]:
    """(max |first - second|, "") or (None, why they cannot be compared). NaN in both at one
    position counts as equal; NaN in one only as infinitely far apart."""
    if not (first.numeric and second.numeric):
        return None, "BYTES outputs are not compared"
    if first.array.shape != second.array.shape:
        return None, f"shapes differ: {list(first.array.shape)} and {list(second.array.shape)}"
    if first.array.size == 0:
        return 0.0, ""
    a, b = first.array.reshape(-1), second.array.reshape(-1)
    # A chunk at a time: the float64 temporaries stay a few MiB however big the outputs.
    worst = max(_chunk_gap(a[i : i + _CHUNK], b[i : i + _CHUNK]) for i in range(0, a.size, _CHUNK))
    return worst, ""


# Elements compared at once (five float64 temporaries of 1 MiB each).
_CHUNK = 2**17


def _chunk_gap(first: np.ndarray, second: np.ndarray) -> float:
    a = first.astype(np.float64)
    b = second.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        gaps = np.abs(a - b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities give NaN above
    gaps = np.where(same, 0.0, np.where(np.isnan(gaps), np.inf, gaps))
    return float(gaps.max())


def disagreement(first: pb.ModelInferResponse, second: pb.ModelInferResponse) -> float | None:
    """The largest absolute difference over every output both answers hold, or None when
    not one of them can be compared."""
    theirs = {output.name: output for output in decode_outputs(second)}
    gaps = [
        max_abs_diff(output, theirs[output.name])[0]
        for output in decode_outputs(first)
        if output.name in theirs
    ]
    known = [gap for gap in gaps if gap is not None]
    return max(known) if known else None
