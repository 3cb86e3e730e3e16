"""gateway.difference on outputs bigger than one comparison chunk, and typed outputs decoded
without a list of Python objects."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.difference import Output, decode_outputs, max_abs_diff
from serving.pb import inference_pb2 as pb

SIZE = 300_001  # past two chunks of 2**17, the last one partial


def _pair(second: np.ndarray) -> tuple[Output, Output]:
    first = np.zeros(SIZE, dtype=np.float32).reshape(-1, 1)
    return Output("y", "FP32", first), Output("y", "FP32", second.reshape(-1, 1))


@pytest.mark.parametrize("position", [0, 2**17 - 1, 2**17, SIZE - 1])
def test_the_largest_gap_is_found_in_any_chunk(position: int) -> None:
    second = np.full(SIZE, 0.5, dtype=np.float32)
    second[position] = -7.0
    assert max_abs_diff(*_pair(second)) == (7.0, "")


def test_nan_in_one_output_only_is_infinitely_far_in_a_later_chunk() -> None:
    second = np.zeros(SIZE, dtype=np.float32)
    second[SIZE - 2] = np.nan
    assert max_abs_diff(*_pair(second)) == (float("inf"), "")


def test_nan_in_both_at_one_position_counts_as_equal() -> None:
    first, second = _pair(np.zeros(SIZE, dtype=np.float32))
    first.array[SIZE - 1] = second.array[SIZE - 1] = np.nan
    assert max_abs_diff(first, second) == (0.0, "")


def test_typed_outputs_decode_to_float64_and_bytes_to_objects() -> None:
    response = pb.ModelInferResponse()
    numbers = response.outputs.add(name="y", datatype="INT64", shape=[2, 2])
    numbers.contents.int64_contents.extend([1, -2, 3, 2**40])
    words = response.outputs.add(name="w", datatype="BYTES", shape=[2])
    words.contents.bytes_contents.extend([b"a", b"bc"])
    y, w = decode_outputs(response)
    assert y.array.dtype == np.float64
    assert y.array.tolist() == [[1.0, -2.0], [3.0, float(2**40)]]
    assert w.array.dtype == object
    assert w.array.tolist() == [b"a", b"bc"]
