"""Runs the whole stack on this machine (`make run`): every framework's service of
`devtools/frameworks.json` and the gateway in front of them as child processes, and stops them
together; `seed` trains the seed model into the repositories that lack it (`make seed`).

`--models` is either our root of one repository per framework (`models/tensorflow`,
`models/pytorch`), which `seed` fills, or a user's model repository in Triton's layout
(`<model>/<version>/...`), which every service serves as it is and `seed` never writes into.

`launch` is also what the tests use to start real servers on port 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devtools.frameworks import (
    FRAMEWORKS_FILE,
    Framework,
    frameworks,
    gateway_frameworks,
    is_model_repository,
    repository_of,
)

__all__ = ["Process", "launch", "seed"]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def launch(
    name: str,
    module: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    port: int = 0,
    timeout: float = 120.0,
    stderr: IO[bytes] | None = None,
) -> Process:
    """Starts `python -m module serve --port PORT`, waits until it listens, returns it.
    `stderr`: where its log goes (a file a test reads), else this process's stderr."""
    port_file = Path(tempfile.mkdtemp(prefix="twinserve-")) / f"{name}.port"
    command = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--port",
        str(port),
        "--port-file",
        str(port_file),
        *args,
    ]
    popen = subprocess.Popen(command, env={**os.environ, **(env or {})}, stderr=stderr)
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with code {popen.returncode} before listening")
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{name} did not start listening within {timeout:.0f}s")
        time.sleep(0.05)
    return Process(name, popen, int(port_file.read_text()))


def _repository(models: Path, framework: Framework) -> list[str]:
    return ["--model-repository", str(repository_of(models, framework))]


def seed(models: Path, chosen: Mapping[str, Framework]) -> None:
    """Trains the seed model into the repository of every chosen framework that trains (all
    at once) and lacks it; RuntimeError naming the one that failed. A user's model repository
    is left as it is: house_price is ours, not theirs."""
    if is_model_repository(models):
        print(f"seed: {models} is a model repository (Triton's layout): nothing is trained into it")
        return
    running = {
        name: subprocess.Popen([sys.executable, "-m", f.module, "seed", *_repository(models, f)])
        for name, f in chosen.items()
        if f.trains
    }
    failed = [name for name, popen in running.items() if popen.wait() != 0]
    if failed:
        raise RuntimeError(f"seeding failed for {', '.join(failed)}")


# The banner's "try:" lines for a user's repository: this many models, then how many more.
_TRIES = 6
_ONNX = re.compile(r'^\s*(platform\s*:\s*"onnxruntime_onnx"|backend\s*:\s*"onnxruntime")', re.M)


def _models_in(repository: Path) -> list[str]:
    """The models of a Triton repository: directories with a configuration or a version."""
    return sorted(
        model.name
        for model in repository.iterdir()
        if model.is_dir()
        and not model.name.startswith(".")
        and (
            (model / "config.pbtxt").is_file()
            or (model / "config.json").is_file()
            or any(entry.is_dir() and entry.name.isdecimal() for entry in model.iterdir())
        )
    )


def _is_onnx(model: Path) -> bool:
    """Whether every service serves `model` (all have ONNX Runtime): its config.pbtxt names
    ONNX, or it names no platform and a version holds model.onnx. A hint for the banner; the
    services decide by serving.engine.layout, which devtools may not import."""
    config = model / "config.pbtxt"
    text = config.read_text(errors="replace") if config.is_file() else ""
    if _ONNX.search(text):
        return True
    if re.search(r"^\s*(platform|backend|default_model_filename)\s*:", text, re.M):
        return False
    return any((version / "model.onnx").exists() for version in model.glob("[0-9]*"))


def _tries(models: Path, served: list[str]) -> list[str]:
    """What the banner suggests: house_price from each framework in our layout; in a user's
    repository, its own models (compare: those every framework serves)."""
    cli = ".venv/bin/twinserve"
    if not is_model_repository(models):
        return [f"{cli} predict 1800 --framework {name}" for name in served]
    names = _models_in(models)
    lines = [f"{cli} predict {name}" for name in names[:_TRIES]]
    if len(served) > 1:
        onnx = [name for name in names if _is_onnx(models / name)][:2]
        lines += [f"{cli} compare {name}" for name in onnx]
    if len(names) > _TRIES:
        lines.append(f"(and {len(names) - _TRIES} more models: {cli} predict MODEL)")
    return lines


def _parse(argv: Sequence[str] | None, known: Mapping[str, Framework]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack")
    parser.add_argument("command", nargs="?", choices=("run", "seed"), default="run")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument(
        "--frameworks",
        type=lambda text: [name for name in text.split(",") if name],
        default=list(known),
        help=f"comma-separated, from {FRAMEWORKS_FILE.name} (default: {','.join(known)})",
    )
    parser.add_argument("--gateway-port", type=int, default=8001)
    # Prometheus /metrics (deploy/monitoring/prometheus.yml scrapes these); the services'
    # ports come from the frameworks file.
    parser.add_argument("--gateway-metrics-port", type=int, default=8002)
    opts = parser.parse_args(argv)
    unknown = [name for name in opts.frameworks if name not in known]
    if unknown:
        parser.error(f"unknown frameworks {unknown}: {FRAMEWORKS_FILE} has {', '.join(known)}")
    return opts


def main(argv: Sequence[str] | None = None) -> None:
    known = frameworks()
    opts = _parse(argv, known)
    chosen = {name: known[name] for name in opts.frameworks}
    if opts.command == "seed":
        seed(opts.models, chosen)
        return

    started: list[Process] = []
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        services: dict[str, Process] = {}
        for name, framework in chosen.items():
            services[name] = launch(
                name,
                framework.module,
                port=framework.port,
                args=_repository(opts.models, framework),
                env={"TWINSERVE_METRICS_PORT": str(framework.metrics_port)},
            )
            started.append(services[name])
        gateway = launch(
            "gateway",
            "gateway",
            port=opts.gateway_port,
            env={
                **gateway_frameworks({name: p.address for name, p in services.items()}),
                "TWINSERVE_GATEWAY_METRICS_PORT": str(opts.gateway_metrics_port),
            },
        )
        started.append(gateway)
        width = max(len("gateway"), *(len(name) for name in services)) + 2
        lines = [f"  {'gateway':<{width}}{gateway.address}   (Open Inference Protocol, gRPC)"]
        lines += [f"  {name:<{width}}{p.address}" for name, p in services.items()]
        metrics = ", ".join(f":{f.metrics_port} ({name})" for name, f in chosen.items())
        tries = "\n      ".join(_tries(opts.models, list(services)))
        print(
            "\ntwinserve is up:\n" + "\n".join(lines) + "\n"
            f"  metrics     http://127.0.0.1:{opts.gateway_metrics_port}/metrics (gateway), "
            f"{metrics}\n\n"
            f"try:  {tries}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop_requested and all(p.popen.poll() is None for p in started):
            time.sleep(0.2)
    finally:
        for process in reversed(started):
            process.stop()


if __name__ == "__main__":
    main()
