"""PyTorch's runtimes besides eager: TorchScript and ONNX files written from a version's
rebuilt module, and the TorchScript file loaded back (the core runs ONNX files itself).

Both exports trace the served `forward` (raw target units, or class probabilities) on the
CPU with an example batch of two. Every shape after the batch comes from the module, and the
modules flatten from dimension 1 (`nn.Flatten`) rather than reshaping by a traced batch size,
so the batch dimension stays dynamic: TorchScript replays the graph for any batch, and the ONNX
graph declares its first dimension as the symbol "batch".

`torch.jit.load` reads TorchScript code and tensors, not pickled Python objects, but it is
no sandbox: the file is trusted as this repository's own export, like the weights file.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from serving.errors import RepositoryError
from torch_service.models import TrainableModule

__all__ = [
    "ONNX_OPSET",
    "TORCHSCRIPT_FILE",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
]

logger = logging.getLogger(__name__)

TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_OPSET = 17
# Not 1: a size-1 dimension is special to broadcasting and squeezing, and exporters may
# specialise on it.
_EXAMPLE_BATCH = 2

# PyTorch 2.13 deprecates torch.jit (for torch.export) and the TorchScript-based ONNX exporter
# (for the dynamo one, which takes seconds per model against tens of milliseconds, prints its
# progress and warns itself). Both work in the torch release the project pins, so these exact
# warnings are ignored around our own calls only, and any other warning still reaches the
# logs (and fails the tests). A regex on each message, plus the module for the generic one.
_TORCH_DEPRECATIONS = (
    (r"`torch\.jit\.(trace|trace_method|save|load)` is deprecated", ""),
    (r"You are using the legacy TorchScript-based ONNX export", ""),
    (r"The feature will be removed", r"torch\.onnx\."),
)


@contextlib.contextmanager
def _torch_deprecations_ignored() -> Iterator[None]:
    # catch_warnings swaps the process-wide filter list: two threads inside at once can leave
    # these narrow filters installed after both have left, which is harmless.
    with warnings.catch_warnings():
        for message, module in _TORCH_DEPRECATIONS:
            warnings.filterwarnings("ignore", message, DeprecationWarning, module)
        yield


def _example(module: TrainableModule) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)  # the same file from the same weights
    return torch.rand((_EXAMPLE_BATCH, *module.input_shape()), generator=generator)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write`s a temporary file beside `path` and renames it, so that `path` is either
    absent or complete, even if the process dies mid-export."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def export_torchscript(module: TrainableModule, path: Path) -> None:
    """Traces `module` (on the CPU, in eval mode) and saves the trace to `path`."""
    example = _example(module)
    with _torch_deprecations_ignored():
        # torch.jit's functions are unannotated; the variable carries their documented type.
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, (example,)
        )
        _write_atomically(path, lambda partial: torch.jit.save(traced, str(partial)))


def export_onnx(module: TrainableModule, path: Path, input_name: str, output_name: str) -> None:
    """Exports `module` (on the CPU, in eval mode) to `path`: one input, one output, both
    named after the signature's tensors, with a dynamic first dimension."""
    example = _example(module)

    def write(partial: Path) -> None:
        torch.onnx.export(
            module,
            (example,),
            str(partial),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript-based exporter, see _TORCH_DEPRECATIONS
        )

    with _torch_deprecations_ignored():
        _write_atomically(path, write)


def load_torchscript(path: Path, device: torch.device) -> nn.Module:
    """The module `export_torchscript` saved at `path`, on `device`, in eval mode."""
    if not path.is_file():
        raise RepositoryError(
            f"{path.parent} has no {path.name}: the torchscript runtime was not exported"
        )
    try:
        with _torch_deprecations_ignored():
            # Unannotated in torch, like torch.jit.trace above.
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=device
            )
    # A damaged archive surfaces as RuntimeError or ValueError depending on where it breaks.
    except Exception as exc:
        logger.warning("cannot read %s", path, exc_info=True)
        raise RepositoryError(f"{path} is not a readable TorchScript archive") from exc
    return module.eval()
