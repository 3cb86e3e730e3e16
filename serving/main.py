"""Command line of a framework service: `serve` (default) and `seed`.

`tf_service/__main__.py` and `torch_service/__main__.py` call `run` with their backend.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from serving.backend import Backend
from serving.logs import configure_logging
from serving.repository import ModelRepository
from serving.seed import seed_repository
from serving.server import serve
from serving.settings import ServiceSettings

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


def run(
    make_backend: Callable[[ServiceSettings], Backend], prog: str, argv: Sequence[str] | None = None
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
    backend = make_backend(settings)
    if args.command == "seed":
        if not seed_repository(ModelRepository(settings.model_repository), backend):
            logger.info("%s already has the seed model", settings.model_repository)
        return
    asyncio.run(serve(settings, backend))
