"""`python -m tests.integration.crashing_writer REPOSITORY MODEL STAGE`: trains a version of
MODEL (the fake backend, price = 5 x size) into REPOSITORY through the repository API, and at STAGE
prints `PAUSED` and waits to be killed:

- `writing`: the weights are written, the metadata and the ONNX export are not;
- `syncing`: after the first fsync of the commit;
- `claimed`: the version number is claimed, the rename has not happened.

The pause is patched in here, not in the code under test."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from serving.backend.fake import AffineBackend

from .oip import train_slope


def _pause() -> None:
    print("PAUSED", flush=True)
    threading.Event().wait()  # until killed


def main(root: str, model: str, stage: str) -> None:
    backend = AffineBackend()
    if stage == "writing":
        backend.export = lambda *args: _pause()  # type: ignore[method-assign]
    elif stage == "syncing":
        fsync = os.fsync

        def fsync_then_pause(fd: int) -> None:
            fsync(fd)
            _pause()

        os.fsync = fsync_then_pause
    elif stage == "claimed":
        os.rename = lambda *args: _pause()
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    train_slope(Path(root), model, 5.0, backend)
    print("COMMITTED", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
