"""Paths and command runners the deployment tests share."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "COMPOSE_FILE",
    "DEPLOY",
    "DOCKERFILES",
    "KUSTOMIZATIONS",
    "ROOT",
    "run",
    "tool",
]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
# Every kustomization a user applies: the two overlays and the on-demand load-test Job.
KUSTOMIZATIONS = {
    "cpu": DEPLOY / "kubernetes" / "overlays" / "cpu",
    "gpu": DEPLOY / "kubernetes" / "overlays" / "gpu",
    "tls": DEPLOY / "kubernetes" / "overlays" / "cpu-tls",
    "loadtest": DEPLOY / "kubernetes" / "loadtest",
}


def tool(name: str) -> str:
    """A command from this venv (the `deploy` extra) or else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the deploy extra (make test-deploy)")
    return found


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs a command; on failure the assertion shows its output."""
    result = subprocess.run(
        list(command),
        cwd=ROOT,
        env=dict(env) if env is not None else None,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(command)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-8000:]}\nstderr:\n{result.stderr[-8000:]}"
        )
    return result


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
