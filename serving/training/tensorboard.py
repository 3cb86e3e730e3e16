"""TensorBoard scalars for training runs, written by the core so both frameworks log the same
tags: `tensorboard --logdir <dir>` shows them side by side (runs are <model>/<framework>/<job>)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

__all__ = ["TAGS", "RunLog", "read_scalars"]

# Epoch metric -> tag. `{metric}` is "rmse" or "accuracy".
TAGS = {
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "val_metric": "{metric}/validation",
    "samples_per_second": "throughput/samples_per_second",
}


class RunLog:
    def __init__(self, directory: Path, metric: str) -> None:
        self.directory = directory
        self.metric = metric
        self._writer = SummaryWriter(logdir=str(directory), flush_secs=5)

    def epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            tag = TAGS.get(key)
            if tag is not None:
                self._writer.add_scalar(tag.format(metric=self.metric), value, epoch)

    def close(self) -> None:
        self._writer.close()


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Reads the scalars of every event file under `directory` back: tag -> [(step, value)].

    Event files are TFRecords: an 8-byte little-endian length, its masked CRC-32C, the payload
    (an `Event` protobuf), the payload's CRC. A damaged record raises ValueError."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            if offset + 12 > len(data):
                raise ValueError(f"{path}: truncated record header at byte {offset}")
            header = data[offset : offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack_from("<I", data, offset + 8)
            payload = data[offset + 12 : offset + 12 + length]
            end = offset + 12 + length
            if header_crc != masked_crc32c(header) or end + 4 > len(data):
                raise ValueError(f"{path}: damaged record at byte {offset}")
            (payload_crc,) = struct.unpack_from("<I", data, end)
            if payload_crc != masked_crc32c(payload):
                raise ValueError(f"{path}: damaged record payload at byte {offset}")
            offset = end + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
