"""The offline GPU host's kit (`make gpu-kit`): a directory to copy to a machine with an NVIDIA
GPU and no network, where one command installs the project beside the host's own CUDA torch
and runs the PyTorch matrix on CPU and CUDA, direct and through the gateway.

    python -m devtools.gpu_kit build [--out dist/gpu-kit] [--python 3.11,3.12]
    PYTHONPATH=KIT/site python3 -m devtools.gpu_kit check       (on the host: what is missing)

The kit holds the project's wheel (setup.py generates its protobuf modules) and, for each
Python, the wheels of what the PyTorch service, the gateway and the load test need
(`twinserve[gpu-kit]`), as pinned by pip's resolver for that Python on manylinux x86_64. It
holds no torch, TensorFlow or CUDA, and neither onnxruntime nor NumPy: the host's torch is the
point, its onnxruntime is ~28 MB a Python (and every service imports it), and NumPy (~16 MB a
Python) comes with onnxruntime; with both the kit would be ~130 MB against a 50 MB budget
(it is ~40 MB). So it installs with `--no-deps` from its own pins, and `check` says what the
host still lacks.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HOST_PROVIDED", "build", "check", "main", "refused", "requirement_lines"]

ROOT = Path(__file__).resolve().parents[1]
EXTRA = "gpu-kit"
PYTHONS = ("3.11", "3.12")
MAX_MB = 50.0
# The manylinux tags a wheel may carry (pip does not widen an explicit --platform): glibc
# 2.28 (RHEL 8, Ubuntu 20.04) and older.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# What the host brings itself, by distribution: left out of the kit, checked by `check`.
HOST_PROVIDED = {
    "torch": "the host's CUDA build is what the GPU half measures",
    "onnxruntime": "every service imports it; ~28 MB a Python (CPU or GPU build, the host's)",
    "numpy": "onnxruntime and torch need it too; ~16 MB a Python",
}
# Never in the kit, whatever the resolver says (a wrong extra would pull them).
_REFUSED = re.compile(r"^(torch|tensorflow|tf-|keras|jax|onnxruntime|nvidia-|cuda|triton\b)|cuda")
# The matrix run.sh runs unless given other arguments (later ones win): the workloads that
# need no scikit-learn, every batch, the PyTorch service alone.
MATRIX = ("--frameworks", "pytorch", "--devices", "cpu,cuda", "--models", "house_price,mlp")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def refused(names: Iterable[str]) -> list[str]:
    """Those of `names` the kit must never hold (torch, TensorFlow, CUDA, ONNX Runtime)."""
    return sorted(n for n in names if _REFUSED.search(_name(n)))


def _target(python: str) -> list[str]:
    """pip's options for wheels of CPython `python` on manylinux x86_64."""
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version", python, *platforms]


def _resolve(wheel: Path, python: str, scratch: Path) -> dict[str, str]:
    """name -> version of everything `twinserve[gpu-kit]` needs on `python`, as pip resolves
    it (metadata only; nothing is installed)."""
    report = scratch / f"resolve-{python}.json"
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
         *_target(python), f"twinserve[{EXTRA}] @ {wheel.resolve().as_uri()}")  # fmt: skip
    found = json.loads(report.read_text())["install"]
    return {_name(item["metadata"]["name"]): item["metadata"]["version"] for item in found}


def requirement_lines(pins: dict[str, dict[str, str]]) -> list[str]:
    """requirements.txt's lines from python -> name -> version: a pin every Python shares
    is one line, any other carries a python_version marker."""
    versions: dict[tuple[str, str], list[str]] = defaultdict(list)
    for python, found in pins.items():
        for name, version in found.items():
            versions[(name, version)].append(python)
    lines = []
    for (name, version), pythons in sorted(versions.items()):
        if len(pythons) == len(pins):
            lines.append(f"{name}=={version}")
        else:
            markers = " or ".join(f'python_version == "{p}"' for p in sorted(pythons))
            lines.append(f"{name}=={version} ; {markers}")
    return lines


def _source(dest: Path) -> Path:
    """The project's files as a clean clone has them (git's tracked and unignored files,
    edits included), copied to `dest`: no build/ left over from an earlier build, no
    generated serving/pb, so the wheel holds what setup.py makes. ROOT itself outside git."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        return ROOT
    for name in filter(None, listed.stdout.decode().split("\0")):
        path = ROOT / name
        if path.is_file():  # a tracked file deleted in the work tree is not
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)
    return dest


def _clear(out: Path) -> None:
    """Empties `out` if it is a kit (or empty): never a directory it did not write."""
    if out.exists() and any(out.iterdir()) and not (out / "KIT.json").is_file():
        raise SystemExit(f"{out} exists and is not a kit (no KIT.json): not overwriting it")
    shutil.rmtree(out, ignore_errors=True)
    (out / "wheels").mkdir(parents=True)


def build(
    out: Path,
    pythons: Sequence[str] = PYTHONS,
    *,
    isolation: bool = True,
    max_mb: float = MAX_MB,
) -> dict[str, Any]:
    """Writes the kit into `out` and returns its manifest (also KIT.json). `isolation`: build
    the project's wheel in pip's isolated environment (as a clean clone would) or in this one
    (which then needs setup.py's build requirements)."""
    _clear(out)
    wheels = out / "wheels"
    pins: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        source = _source(Path(scratch) / "source")
        _pip("wheel", "--quiet", "--no-deps", *([] if isolation else ["--no-build-isolation"]),
             "-w", str(wheels), str(source))  # fmt: skip
        (wheel,) = wheels.glob("twinserve-*.whl")
        for python in pythons:
            found = _resolve(wheel, python, Path(scratch))
            bad = refused(set(found) - set(HOST_PROVIDED))
            if bad:
                raise SystemExit(f"twinserve[{EXTRA}] pulls {', '.join(bad)} on {python}")
            kept = {n: v for n, v in found.items() if n not in HOST_PROVIDED and n != "twinserve"}
            _pip("download", "--quiet", "--no-deps", "-d", str(wheels), *_target(python),
                 *(f"{n}=={v}" for n, v in sorted(kept.items())))  # fmt: skip
            pins[python] = {"twinserve": found["twinserve"], **kept}
    (out / "requirements.txt").write_text(
        "# Installed with --no-deps (see INSTALL.md): the host brings "
        + ", ".join(HOST_PROVIDED) + ".\n" + "\n".join(requirement_lines(pins)) + "\n"
    )  # fmt: skip
    (out / "INSTALL.md").write_text(_INSTALL.format(pythons=", ".join(pythons), **_texts()))
    run = out / "run.sh"
    run.write_text(_RUN.format(matrix=" ".join(MATRIX)))
    run.chmod(0o755)
    sizes = {p.name: p.stat().st_size for p in sorted(wheels.iterdir())}
    total_mb = round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6, 2)
    manifest: dict[str, Any] = {
        "pythons": list(pythons),
        "platforms": list(PLATFORMS),
        "host_provided": HOST_PROVIDED,
        "pins": pins,
        "wheels": sizes,
        "total_mb": total_mb,  # MB of 10^6 bytes, KIT.json aside
    }
    (out / "KIT.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if max_mb and total_mb > max_mb:
        raise SystemExit(f"the kit is {total_mb} MB, over its {max_mb} MB budget")
    return manifest


def _texts() -> dict[str, str]:
    return {
        "host": "\n".join(f"- `{name}`: {why}" for name, why in HOST_PROVIDED.items()),
        "matrix": " ".join(MATRIX),
    }


_INSTALL = """# twinserve's GPU-host kit

For a machine with an NVIDIA GPU, Python {pythons} and no network: the project and the wheels
the PyTorch service, the gateway and the load test need, without torch, TensorFlow or CUDA.

## The command

From a working directory of your choice (the models and the report go there):

    sh KIT/run.sh

It installs the kit once into `KIT/site` (beside the host's packages, which stay as they are):

    python3 -m pip install --no-index --find-links KIT/wheels --no-deps --upgrade \\
        --target KIT/site -r KIT/requirements.txt

checks what the host must bring (`PYTHONPATH=KIT/site python3 -m devtools.gpu_kit check`), and
runs the matrix on the host's own torch, writing `report/` (report.md, report.json, report.csv):

    PYTHONPATH=KIT/site python3 -m loadtest {matrix} --out report

Arguments to run.sh go after these (later ones win): `sh KIT/run.sh --batches 1,32,256`.
`PYTHON=/path/to/python3` picks the interpreter (the one with the CUDA torch); `OUT=dir` the
report's directory. `CUDA_VISIBLE_DEVICES` is honoured (empty or -1: no GPU).

## What the host brings

{host}

`--no-deps` keeps pip from wanting them from the kit; `check` says if one is missing or too
old. The report has no plots (no matplotlib in the kit: it says so in its notes), and no
`cnn` workload (it needs scikit-learn). Bring the report back and merge it with a CPU host's:
`python -m loadtest merge cpu-report/ report/ --out merged/`.
"""

_RUN = """#!/bin/sh
# twinserve's GPU-host kit: install beside the host's torch (once), check, run the matrix.
set -eu
KIT=$(cd "$(dirname "$0")" && pwd)
PYTHON=${{PYTHON:-python3}}
if [ ! -f "$KIT/site/.installed" ]; then
    "$PYTHON" -m pip install --no-index --find-links "$KIT/wheels" --no-deps --upgrade \\
        --target "$KIT/site" -r "$KIT/requirements.txt"
    touch "$KIT/site/.installed"
fi
export PYTHONPATH="$KIT/site${{PYTHONPATH:+:$PYTHONPATH}}"
"$PYTHON" -m devtools.gpu_kit check
exec "$PYTHON" -m loadtest {matrix} --out "${{OUT:-report}}" "$@"
"""


# Distributions that stand for another: the host's ONNX Runtime may be its GPU build.
_PROVIDES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def check() -> list[str]:
    """What this environment lacks to run the kit's matrix: every requirement of
    twinserve[gpu-kit] (the host's NumPy included) and the host's torch and onnxruntime
    (any build: torch's pin is the CPU wheel's). Empty when all is there. Reads metadata
    only: importing torch takes seconds."""
    from importlib import metadata  # noqa: PLC0415

    from packaging.requirements import Requirement  # noqa: PLC0415  (in the kit: tensorboardX's)

    try:
        requires = metadata.requires("twinserve") or []
    except metadata.PackageNotFoundError:
        return ["twinserve is not installed: run the kit's pip command (INSTALL.md)"]
    wanted: dict[str, Requirement] = {"torch": Requirement("torch")}
    for text in requires:
        requirement = Requirement(text)
        name = _name(requirement.name)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": EXTRA}) or name == "onnxruntime":
            wanted.setdefault(name, requirement)
    problems = []
    for name, requirement in wanted.items():
        versions = []
        for distribution in _PROVIDES.get(name, (name,)):
            try:
                versions.append(metadata.version(distribution))
            except metadata.PackageNotFoundError:
                continue
        if not versions:
            why = HOST_PROVIDED.get(name, "it is in the kit: run the kit's pip command")
            problems.append(f"{requirement.name} is missing ({why})")
        elif not any(requirement.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{requirement.name} {versions[0]} does not satisfy {requirement}")
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.gpu_kit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write the kit")
    make.add_argument("--out", type=Path, default=ROOT / "dist" / "gpu-kit")
    make.add_argument("--python", default=",".join(PYTHONS), help="Python versions, e.g. 3.12")
    make.add_argument("--no-build-isolation", action="store_true",
                      help="build the project's wheel in this environment")  # fmt: skip
    make.add_argument("--max-mb", type=float, default=MAX_MB, help="fail above it (0: never)")
    commands.add_parser("check", help="on the host: what the kit's matrix still lacks")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = check()
        for problem in problems:
            print(f"gpu-kit check: {problem}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print("gpu-kit check: everything the matrix needs is installed")
        return
    pythons = [p.strip() for p in args.python.split(",") if p.strip()]
    manifest = build(args.out, pythons, isolation=not args.no_build_isolation, max_mb=args.max_mb)
    print(f"{args.out}: {len(manifest['wheels'])} wheels, {manifest['total_mb']} MB, "
          f"Python {', '.join(pythons)}; see {args.out / 'INSTALL.md'}")  # fmt: skip


if __name__ == "__main__":
    main()
