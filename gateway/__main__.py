"""`python -m gateway [serve]`: the gateway in front of the configured framework services."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from gateway.server import serve
from gateway.settings import GatewaySettings
from serving.rpc import tracing
from serving.rpc.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument("command", nargs="?", choices=("serve",), default="serve")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--port-file", type=Path)
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("port_file", args.port_file))
        if v is not None
    }
    settings = GatewaySettings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.tracing:
        tracing.configure("gateway")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
