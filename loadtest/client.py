"""A client process of `loadtest.generator.ClientPool`: `python -m loadtest.client FD` runs
each `Share` it receives on the socket FD and sends back its `ShareResult`, until None."""

from __future__ import annotations

import sys
import traceback
from multiprocessing.connection import Connection

from loadtest.worker import ClientFailure, run_share

__all__ = ["main"]


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    while True:
        try:
            share = conn.recv()
        except EOFError:  # the pool went away
            return
        if share is None:
            return
        try:
            conn.send(run_share(share))
        except Exception:
            conn.send(ClientFailure(traceback.format_exc()))


if __name__ == "__main__":
    main()
