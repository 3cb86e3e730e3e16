"""Command line of a framework service: `serve` (default) and `seed`.

Each framework's `__main__` (tf_service, torch_service, onnx_service) calls `run` with its
backend; one that does not train (`trains=False`) refuses Train and `seed`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf.internal import api_implementation

from serving.app.server import serve
from serving.app.settings import ServiceSettings
from serving.app.workers import supervise
from serving.backend import Backend
from serving.engine.repository import ModelRepository
from serving.errors import ServingError
from serving.rpc import tracing
from serving.rpc.logs import configure_logging
from serving.training.seed import seed_repository

__all__ = ["run"]

logger = logging.getLogger(__name__)


def _parse(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="twinserve framework service")
    parser.add_argument("command", nargs="?", choices=("serve", "seed"), default="serve")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-repository", type=Path)
    parser.add_argument("--port-file", type=Path)
    return parser.parse_args(argv)


def check_protobuf() -> None:
    """Warns when protobuf runs its pure-Python implementation: every message then costs
    tens of microseconds more to parse and build (the upb one is the default wheel's)."""
    implementation = api_implementation.Type()
    if implementation != "upb":
        logger.warning(
            "protobuf runs the '%s' implementation, not upb: requests will be slower "
            "(unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION, install the binary wheel)",
            implementation,
        )


def run(
    make_backend: Callable[[ServiceSettings], Backend],
    prog: str,
    argv: Sequence[str] | None = None,
    *,
    trains: bool = True,
) -> None:
    args = _parse(argv, prog)
    overrides = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("model_repository", args.model_repository),
            ("port_file", args.port_file),
        )
        if value is not None
    }
    settings = ServiceSettings(**overrides)  # environment first, flags win
    configure_logging(settings.log_level, settings.log_format)
    check_protobuf()
    if settings.tracing and args.command == "serve" and settings.worker_count() == 1:
        tracing.configure(prog.removeprefix("python -m "))
    if args.command == "serve" and settings.worker_count() > 1:
        # The supervisor builds no backend: only the workers import the framework.
        supervise(settings, module=prog.removeprefix("python -m "))
        return
    try:
        backend = make_backend(settings)
    except ServingError as exc:
        # A setting the machine cannot honour (device "cuda" without a GPU): one clear line,
        # not a traceback.
        logger.error("cannot start: %s", exc.message)
        raise SystemExit(2) from None
    if args.command == "seed":
        if not trains:
            logger.error(
                "cannot seed: the %s service does not train; seed the repository it serves "
                "with a framework that does",
                backend.framework,
            )
            raise SystemExit(2)
        if not seed_repository(ModelRepository(settings.model_repository), backend):
            logger.info("%s already has the seed model", settings.model_repository)
        return
    asyncio.run(serve(settings, backend, trains=trains))
