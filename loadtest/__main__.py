"""`python -m loadtest`: the latency matrix (`loadtest.cli`), or with `merge` first, several
runs' reports as one (`loadtest.merge`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    # Imported on demand: a merge reads JSON only, so it needs neither gRPC, the services'
    # modules nor matplotlib, which the matrix's modules import.
    if args[:1] == ["merge"]:
        from loadtest.merge import main as merge  # noqa: PLC0415

        merge(args[1:])
        return
    from loadtest.cli import main as matrix  # noqa: PLC0415

    # argv as given (None: sys.argv), so the matrix parses exactly what it always did.
    matrix(argv)


if __name__ == "__main__":
    main()
