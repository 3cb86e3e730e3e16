"""The build step pyproject.toml cannot say: the protobuf modules under serving/pb are generated
from proto/ (git ignores them, see `make proto`), so every wheel generates them itself. The
metadata stays in pyproject.toml; grpcio-tools and mypy-protobuf are build requirements there.

A wheel gets them in its build directory (the source tree is left as it is); an editable install
(`pip install -e .`) writes them into the source tree, where it imports them from, as
`make proto` does.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = ROOT / "proto"
# Where the modules go; also protoc's name for proto/, so that they import each other as
# serving.pb.<module> (the Makefile's -Iserving/pb=proto).
PB = "serving/pb"


def generate(out: Path) -> list[Path]:
    """Writes serving/pb's modules (and their .pyi stubs) under `out`; returns the files."""
    from grpc_tools import protoc  # noqa: PLC0415  (a build requirement, not a dependency)

    protos = sorted(str(path) for path in PROTO.rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PB}={PROTO}",
        # protobuf's own .proto files, which `python -m grpc_tools.protoc` adds by itself.
        f"-I{resources.files('grpc_tools') / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ]
    # Typed stubs of the gRPC modules, as `make proto` writes them: the script is on PATH in
    # pip's build environment (mypy-protobuf is a build requirement).
    plugin = shutil.which("protoc-gen-mypy_grpc")
    if plugin:
        args += [f"--plugin=protoc-gen-mypy_grpc={plugin}", f"--mypy_grpc_out={out}"]
    package = out / PB
    package.mkdir(parents=True, exist_ok=True)
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {', '.join(protos)}")
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return sorted(p for p in package.rglob("*") if p.suffix in (".py", ".pyi"))


class BuildWithProtos(build_py):
    """build_py, then the generated modules beside the copied sources."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            generate(ROOT)
        else:
            self._generated = generate(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        # What a wheel records: the generated modules too (an editable install's are sources).
        return [*super().get_outputs(include_bytecode), *map(str, getattr(self, "_generated", []))]


setup(cmdclass={"build_py": BuildWithProtos})
