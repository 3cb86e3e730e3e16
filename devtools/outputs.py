"""The `twinserve` client's answers: outputs decoded, printed per name (small arrays in full,
big ones summarised) and written as `.npy` files; comparisons of several targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.protocol.codec import decode_tensor
from serving.protocol.names import FRAMEWORK_PARAM

__all__ = ["decode_outputs", "describe", "print_answer", "print_comparison", "write_outputs"]

# Arrays up to this many elements are printed whole; a bigger one would flood the terminal.
FULL = 16
_FIRST = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a raw answer (the gateway's default), by name."""
    return {
        output.name: decode_tensor(output.name, output.datatype, output.shape, raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _values(array: np.ndarray) -> str:
    if array.dtype.kind in "OS":
        return repr([item.decode(errors="replace") for item in array.ravel().tolist()])
    # One line per output, whatever its rank.
    return np.array2string(array, separator=", ", threshold=FULL).replace("\n", "")


def _scalar(item: object) -> str:
    if isinstance(item, bytes):
        return repr(item.decode(errors="replace"))
    return f"{item:.6g}" if isinstance(item, float) else str(item)


def describe(name: str, datatype: str, array: np.ndarray) -> str:
    """`name DATATYPE [shape]: values`, or for a big array its first values (and range)."""
    head = f"{name} {datatype} {list(array.shape)}"
    if array.size <= FULL:
        return f"{head}: {_values(array.reshape(-1) if array.ndim == 0 else array)}"
    first = ", ".join(_scalar(item) for item in array.ravel()[:_FIRST].tolist())
    summary = f"{head}: {array.size} values, first {first}, ..."
    if array.dtype.kind in "biuf":
        summary += f" (min {array.min():.6g}, max {array.max():.6g})"
    return summary


def write_outputs(outputs: dict[str, np.ndarray], directory: Path) -> list[Path]:
    """Each output as `<directory>/<name>.npy` (characters unsafe in a file name become `_`).
    BYTES outputs are saved as a bytes ('S') array: an object array would need pickling."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in outputs.items():
        path = directory / f"{_UNSAFE.sub('_', name)}.npy"
        saved = np.array(array.tolist(), dtype=np.bytes_) if array.dtype.kind == "O" else array
        np.save(path, saved, allow_pickle=False)
        written.append(path)
    return written


def print_answer(
    response: pb.ModelInferResponse,
    values: Sequence[float] | None,
    output_dir: Path | None,
    out: TextIO,
) -> None:
    """Who answered, then each output (`values`: the shorthand's, each against its answer);
    with `output_dir`, every output written there as `.npy`."""
    served_by = response.parameters[FRAMEWORK_PARAM].string_param or "?"
    head = f"{response.model_name} v{response.model_version} ({served_by})"
    outputs = decode_outputs(response)
    if values:
        # The house-price shorthand, as it always printed: each value against its answer.
        for value, answer in zip(values, next(iter(outputs.values())).ravel(), strict=True):
            print(f"{head}: {value:g} -> {answer:.2f}", file=out)
    else:
        print(head, file=out)
        for tensor in response.outputs:
            print(f"  {describe(tensor.name, tensor.datatype, outputs[tensor.name])}", file=out)
    if output_dir is not None:
        for path in write_outputs(outputs, output_dir):
            print(f"wrote {path}", file=out)


def _target_lines(head: str, result: cpb.TargetResult, values: Sequence[float] | None) -> list[str]:
    lines = []
    for output in result.outputs:
        if len(output.values) != np.prod(output.shape, dtype=np.int64):
            # Compare carries numbers only (BYTES outputs come without values).
            lines.append(f"{head}  {output.name} {output.datatype} {list(output.shape)}")
            continue
        array = np.asarray(output.values).reshape(tuple(output.shape))
        if values is None:
            lines.append(f"{head}  {describe(output.name, output.datatype, array)}")
            continue
        # The house-price shorthand: one line per input value, as `predict` prints it.
        for value, row in zip(values, array.reshape(len(values), -1), strict=True):
            shown = ", ".join(f"{x:.2f}" for x in row)
            lines.append(f"{head}  {output.name}: {value:g} -> {shown}")
    return lines


def print_comparison(
    answer: cpb.CompareResponse, values: Sequence[float] | None, out: TextIO
) -> int:
    """Each target's answers, then the differences; 1 if a target failed. `values`: the
    shorthand's input values, printed against their answers; None for any other inputs."""
    names = [f"{r.target.framework}/{r.target.runtime or 'default'}" for r in answer.results]
    width = max((len(name) for name in names), default=0)
    for name, result in zip(names, answer.results, strict=True):
        if result.status.code:
            print(f"{name:<{width}}  {result.status.name}: {result.status.message}", file=out)
            continue
        head = f"{name:<{width}}  v{result.model_version}  {result.latency_ms:7.1f} ms"
        for line in _target_lines(head, result, values):
            print(line, file=out)
    for gap in answer.differences:
        size = f"{gap.max_abs_diff:.4g}" if gap.HasField("max_abs_diff") else gap.note
        print(
            f"max abs difference {names[gap.first]} vs {names[gap.second]} ({gap.output}): {size}",
            file=out,
        )
    return 1 if any(result.status.code for result in answer.results) else 0
