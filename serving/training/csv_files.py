"""Reads a training CSV from under the data directory into float arrays.

Everything in the file and its path comes from the client, so every way it can be wrong ends
in InvalidInput (or NotFound, or ResourceExhausted past a size limit) naming the file, the
line and what to fix; never in an OSError, a UnicodeDecodeError or a csv.Error. The file is
read a line at a time into one growing float buffer, and the limits apply as it is read: a
file of tiny fields cannot become gigabytes of Python strings.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from serving.errors import InvalidInput, NotFound, ResourceExhausted

__all__ = ["MAX_CSV_BYTES", "CsvData", "escape", "read_csv", "show"]

MAX_CSV_BYTES = 256 * 1024 * 1024
# Characters per value a line may spend on average (digits, sign, exponent, separators,
# spaces): lines are cut off at this times the columns allowed, before csv splits them.
_CHARS_PER_VALUE = 32
_SHOWN = 100  # characters of a client's text quoted back in a message


@dataclass(frozen=True, slots=True)
class CsvData:
    path: str
    feature_columns: tuple[str, ...] = ()
    target_column: str = ""


def escape(text: str, limit: int = _SHOWN) -> str:
    """Client text for a message: control characters escaped, at most `limit` kept."""
    kept = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return kept + ("..." if len(text) > limit else "")


def show(text: str, limit: int = _SHOWN) -> str:
    """`escape`d and quoted."""
    return f"'{escape(text, limit)}'"


def _resolve(path: str, data_dir: Path) -> Path:
    if not path:
        raise InvalidInput("the CSV dataset names no path")
    shown = show(path)
    if "\x00" in path:
        raise InvalidInput(f"CSV path {shown} contains a NUL character; send the file's name")
    relative = Path(path)
    outside = InvalidInput(
        f"CSV path {shown} is outside the data directory; give a path relative to it"
    )
    if relative.is_absolute():
        raise outside
    try:
        root = data_dir.resolve()
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            raise outside
        if target.is_dir():
            raise InvalidInput(f"CSV path {shown} is a directory; name a CSV file in it")
        if not target.is_file():
            raise NotFound(f"no CSV file {shown} in the data directory")
        size = target.stat().st_size
    except OSError as exc:  # a name too long, a component that is a file
        raise InvalidInput(f"CSV path {shown} cannot be used: {exc.strerror}") from None
    except RuntimeError:  # Path.resolve on a symbolic link loop
        raise InvalidInput(f"CSV path {shown} is a loop of symbolic links") from None
    if size > MAX_CSV_BYTES:
        raise ResourceExhausted(f"CSV file {shown} is larger than {MAX_CSV_BYTES} bytes")
    return target


class _LineTooLong(Exception):
    pass


def _lines(handle: TextIO, limit: int) -> Iterator[str]:
    """The file's lines, each read with a bound: readline() alone reads a line of any size."""
    while line := handle.readline(limit + 2):
        if len(line.rstrip("\r\n")) > limit:
            raise _LineTooLong
        yield line


def _columns(header: list[str], order: CsvData, shown: str, max_columns: int) -> list[int]:
    """Indices in a row of the feature columns, then of the target."""
    if len(order.feature_columns) > max_columns:
        raise ResourceExhausted(
            f"the request names {len(order.feature_columns)} feature columns; this service "
            f"trains on at most {max_columns} features (TWINSERVE_TRAIN_MAX_INPUT_VALUES)"
        )
    names = [name.strip() for name in header]
    listing = ", ".join(escape(n, 40) for n in names[:20])
    listing += f", ... ({len(names)} in all)" if len(names) > 20 else ""
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise InvalidInput(
            f"CSV file {shown} names column {show(repeated[0])} more than once in its header; "
            "give each column its own name"
        )
    target = order.target_column or names[-1]
    features = list(order.feature_columns) or [c for c in names if c != target]
    known = set(names)
    missing = [escape(c, 40) for c in [*features, target] if c not in known]
    if missing:
        raise InvalidInput(
            f"CSV file {shown} has no column(s) {', '.join(missing[:5])} (columns: {listing})"
        )
    if not features:
        raise InvalidInput(f"CSV file {shown} has no feature columns")
    if target in features:
        raise InvalidInput(
            f"CSV file {shown}: column {show(target)} is both a feature and the target"
        )
    index = {name: i for i, name in enumerate(names)}
    return [index[name] for name in [*features, target]]


def _read(
    reader: Iterator[list[str]],
    line: Callable[[], int],
    order: CsvData,
    limits: tuple[int, int],
) -> tuple[array[float], int]:
    """The wanted columns of every row, row after row, and how many columns that is."""
    shown = show(order.path)
    max_columns, max_values = limits
    rows = (row for row in reader if row)  # blank lines (a trailing one) are no rows
    header = next(rows, None)
    if header is None:
        raise InvalidInput(f"CSV file {shown} is empty; it needs a header row and rows")
    if len(header) > max_columns + 1:
        raise ResourceExhausted(
            f"CSV file {shown} has {len(header)} columns; this service trains on at most "
            f"{max_columns} features (TWINSERVE_TRAIN_MAX_INPUT_VALUES)"
        )
    indices = _columns(header, order, shown, max_columns)
    names = [header[i].strip() for i in indices]
    values: array[float] = array("d")
    features = len(indices) - 1
    for row in rows:
        if len(row) != len(header):
            raise InvalidInput(
                f"CSV file {shown} row {line()} has {len(row)} fields, the header {len(header)}"
            )
        if (len(values) // len(indices) + 1) * features > max_values:
            raise ResourceExhausted(
                f"CSV file {shown} holds more than {max_values} feature values; this service "
                "trains on at most that many (TWINSERVE_TRAIN_MAX_DATA_VALUES)"
            )
        values.extend(
            _number(row[i], name, line(), shown) for i, name in zip(indices, names, strict=True)
        )
    return values, len(indices)


def read_csv(
    order: CsvData, data_dir: Path, *, max_columns: int, max_values: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(x [N, F] float64, y [N, 1] float64, description). At most `max_columns` features and
    `max_values` feature values in all (ResourceExhausted past either)."""
    path = _resolve(order.path, data_dir)
    shown = show(order.path)
    line_limit = _CHARS_PER_VALUE * (max_columns + 2)
    reader = csv.reader(())
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(_lines(handle, line_limit))
            values, width = _read(reader, lambda: reader.line_num, order, (max_columns, max_values))
    except _LineTooLong:
        raise InvalidInput(
            f"CSV file {shown} line {reader.line_num + 1} is longer than {line_limit} "
            f"characters; rows of at most {max_columns} numbers fit"
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"CSV file {shown} is not UTF-8 text (a byte at or after line {reader.line_num + 1} "
            "is not valid UTF-8); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise InvalidInput(
                f"CSV file {shown} line {reader.line_num}: a field is longer than "
                f"{csv.field_size_limit()} characters (an unclosed quote?); fields hold numbers"
            ) from None
        raise InvalidInput(f"CSV file {shown} line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise InvalidInput(f"CSV file {shown} cannot be read: {exc.strerror}") from None
    if not values:
        raise InvalidInput(f"CSV file {shown} needs a header row and at least one row")
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, width)
    return table[:, :-1], table[:, -1:], f"csv:{order.path}"


def _number(text: str, column: str, line: int, shown: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(
            f"CSV file {shown} row {line}, column {show(column)}: {show(text.strip(), 40)} "
            "is not a number"
        ) from None
    if not math.isfinite(value):
        raise InvalidInput(
            f"CSV file {shown} row {line}, column {show(column)}: {show(text.strip(), 40)} "
            "is not a finite number (NaN and infinity cannot be trained on)"
        )
    return value
