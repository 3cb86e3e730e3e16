"""Prints requirements from pyproject.toml, one a line, for an image's dependency layer.

Run by the Dockerfiles before the source is copied in, so the dependency layer is rebuilt only
when pyproject.toml changes. Standard library only (the base image has nothing else).

    python3 requirements.py pyproject.toml --extra tf               # core + the tf extra
    python3 requirements.py pyproject.toml --extra torch --without torch
    python3 requirements.py pyproject.toml --extra tf --swap tensorflow-cpu=tensorflow[and-cuda]
    python3 requirements.py pyproject.toml --extra torch --swap "onnxruntime=onnxruntime-gpu<1.27"
    python3 requirements.py pyproject.toml --only grpcio-tools      # one pinned requirement
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# A version specifier of its own in a swap's NEW (`onnxruntime-gpu<1.27`): NEW replaces the
# whole requirement; without one (`tensorflow[and-cuda]`) the old specifier is kept.
_SPECIFIER = re.compile(r"[<>=!~]")


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read a name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


_EXTRAS = re.compile(r"\[([^\]]*)\]")


def _extras(project: str, optional: dict[str, list[str]], extras: list[str]) -> list[str]:
    """The requirements of `extras`, an extra naming the project itself (`twinserve[engine]`,
    as pip allows) replaced by that extra's own requirements, each requirement once."""
    found: list[str] = []
    for extra in extras:
        for requirement in optional[extra]:
            if _name(requirement) == project:
                match = _EXTRAS.search(requirement)
                inner = [e.strip() for e in match.group(1).split(",")] if match else []
                found.extend(_extras(project, optional, inner))
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def requirements(
    pyproject: Path,
    extras: list[str],
    without: list[str],
    swaps: dict[str, str],
    only: str | None,
) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    if only is not None:
        every = [r for group in (project["dependencies"], *optional.values()) for r in group]
        found = [r for r in every if _name(r) == _name(only)]
        if not found:
            raise SystemExit(f"{only} is not a requirement in {pyproject}")
        return found[:1]
    missing = [extra for extra in extras if extra not in optional]
    if missing:
        raise SystemExit(f"no extra {missing} in {pyproject}")
    chosen = [*project["dependencies"], *_extras(_name(project["name"]), optional, extras)]
    dropped = {_name(name) for name in without}
    renamed = {_name(old): new for old, new in swaps.items()}
    lines = []
    for requirement in chosen:
        name = _name(requirement)
        if name in dropped:
            continue
        if name in renamed:
            new = renamed[name]
            if _SPECIFIER.search(new):
                # Another distribution with versions of its own (a GPU build's CUDA line).
                lines.append(new)
            else:
                # Keep the version specifier, change the distribution (e.g. the GPU build).
                lines.append(new + requirement[len(_NAME.match(requirement)[0]) :])  # type: ignore[index]
        else:
            lines.append(requirement)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--without", action="append", default=[])
    parser.add_argument("--swap", action="append", default=[], metavar="OLD=NEW")
    parser.add_argument("--only")
    args = parser.parse_args(argv)
    swaps = dict(swap.split("=", 1) for swap in args.swap)
    lines = requirements(args.pyproject, args.extra, args.without, swaps, args.only)
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
