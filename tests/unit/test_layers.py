"""The layer rules of serving/__init__.py and each package's docstring, checked on the import
graph of the source (every import statement, module-level or not), and the gateway's promise
that importing it loads no framework, checked on sys.modules in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = (
    "serving",
    "gateway",
    "devtools",
    "tf_service",
    "torch_service",
    "onnx_service",
    "loadtest",
    "benchmarks",
)
FOUNDATION = {"serving.errors", "serving.types", "serving.machine"}
PROTOCOL = FOUNDATION | {"serving.protocol"}
KIT = PROTOCOL | {"serving.rpc"}
ENGINE = KIT | {"serving.backend", "serving.engine"}
CORE = ENGINE | {"serving.training", "serving.app"}
FRAMEWORKS = {"tensorflow", "keras", "torch", "tf2onnx", "onnxscript"}

# Layer -> the layers of ours it may import (serving.pb, generated code, is open to all).
ALLOWED: dict[str, set[str]] = {
    "serving": {"serving.backend", *FOUNDATION},
    "serving.errors": set(),
    "serving.types": set(),
    "serving.machine": set(),
    "serving.protocol": FOUNDATION,
    "serving.rpc": PROTOCOL,
    "serving.backend": FOUNDATION,
    "serving.engine": ENGINE,
    "serving.training": ENGINE | {"serving.training"},
    "serving.app": CORE,
    "gateway": KIT,
    "devtools": KIT,
    "tf_service": CORE - {"serving.training"},
    "torch_service": CORE - {"serving.training"},
    # ONNX Runtime only (it is no FRAMEWORK): it serves the others' exports without them.
    "onnx_service": CORE - {"serving.training"},
    "loadtest": CORE | {"devtools"},
    "benchmarks": CORE | {"devtools", "loadtest"},
}
# Modules outside the framework packages that must never import a framework.
FRAMEWORK_FREE = {layer for layer in ALLOWED if layer not in ("tf_service", "torch_service")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "serving" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def _modules() -> Iterator[tuple[str, Path]]:
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("serving", "pb"):
                continue
            parts = relative.with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                # `from serving import errors` imports serving.errors.
                yield node.lineno, f"{node.module}.{alias.name}"


def _violations() -> list[str]:
    found = []
    for module, path in _modules():
        source = layer_of(module)
        for line, target in _imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in FRAMEWORKS and source in FRAMEWORK_FREE:
                found.append(f"{where}: {source} imports the framework {target}")
            if top not in OURS or target == "serving" or target.startswith("serving.pb"):
                continue
            layer = layer_of(target)
            if layer == "serving" and target.count(".") == 1:
                continue  # `from serving import X`: X is checked as serving.X
            if layer != source and layer not in ALLOWED[source]:
                found.append(f"{where}: {source} may not import {target}")
    return found


def test_every_package_is_in_a_layer() -> None:
    layers = {layer_of(module) for module, _ in _modules()}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


def test_imports_follow_the_layer_rules() -> None:
    assert _violations() == []


def test_the_rules_catch_an_import_that_breaks_them(tmp_path: Path) -> None:
    """The checker itself: a gateway module importing the engine is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from serving.engine.manager import ModelManager\nimport torch\n")
    layer = layer_of("gateway.bad")
    targets = [target for _, target in _imports(bad)]
    assert "serving.engine.manager" in targets
    assert layer_of("serving.engine.manager") not in ALLOWED[layer]
    assert "torch" in targets and layer in FRAMEWORK_FREE


@pytest.mark.parametrize("entry", ["gateway.__main__", "devtools.cli"])
def test_the_gateway_and_the_client_load_no_framework(entry: str) -> None:
    """Importing the gateway (or the client) loads no framework, ONNX, scikit-learn, TensorBoard
    writer, nor the engine or training (which would bring them)."""
    heavy = (
        *sorted(FRAMEWORKS),
        "onnxruntime",
        "onnx",
        "sklearn",
        "tensorboardX",
        "serving.engine",
        "serving.training",
        "serving.app",
    )
    code = (
        f"import importlib, json, sys; importlib.import_module({entry!r}); "
        f"print(json.dumps([m for m in sys.modules if m.split('.')[0] in {heavy!r} "
        f"or '.'.join(m.split('.')[:2]) in {heavy!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
