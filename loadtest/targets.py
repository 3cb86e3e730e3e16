"""Where the load goes: services this run starts on this machine (per device), or endpoints
that already run (a Compose stack, a Kubernetes Service), given by address."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devtools.frameworks import (
    Framework,
    frameworks,
    gateway_frameworks,
    is_model_repository,
    repository_of,
)
from devtools.stack import Process, launch

__all__ = ["FRAMEWORKS", "Endpoints", "LocalStack", "seed_models", "seeders"]

# The frameworks of devtools/frameworks.json: their services' modules and repositories.
KNOWN = frameworks()
FRAMEWORKS = tuple(KNOWN)


@dataclass
class Endpoints:
    """Addresses by framework (direct) and of the gateway; None where there is none."""

    direct: dict[str, str] = field(default_factory=dict)
    gateway: str | None = None
    echo: str | None = None  # the floor: a bare gRPC server with a canned answer
    # Sent with every call: the bearer token of a gateway that requires one.
    metadata: tuple[tuple[str, str], ...] = ()


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Points file descriptor 2 at `path` while children are started, so the services' logs
    (they inherit it) go to a file instead of through the progress bar. `devtools.stack.launch`
    takes no output argument; this process writes nothing meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def seeders(frameworks: Iterable[str]) -> list[Framework]:
    """The training frameworks that fill the repositories `frameworks` serve: each one's own,
    and for one that does not train, the trainer of the repository it serves (onnx serves
    pytorch's). `--frameworks pytorch,onnx` seeds pytorch only; tensorflow is never touched
    unless selected, so a host without TensorFlow can run the rest."""
    repositories = {KNOWN[name].repository for name in frameworks}
    return [f for f in KNOWN.values() if f.trains and f.repository in repositories]


def seed_models(models: Path, log: Path, frameworks: Iterable[str] = FRAMEWORKS) -> dict[str, str]:
    """Trains the seed model (house_price) into the repositories of `frameworks` where it is
    missing (see `seeders`). Nothing is written into a user's Triton model repository, which
    every service serves as it is: house_price is then one more model, measured if it is
    there. Returns why seeding failed, by framework served from a repository left unseeded
    (empty when all went well); the others are seeded whatever happened to those."""
    if is_model_repository(models):
        return {}
    frameworks = tuple(frameworks)
    waiting: dict[str, subprocess.Popen[bytes]] = {}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        for framework in seeders(frameworks):
            repository = repository_of(models, framework)
            if any(p.name.isdigit() for p in (repository / "house_price").glob("*")):
                continue
            command = [sys.executable, "-m", framework.module, "seed"]
            waiting[framework.repository] = subprocess.Popen(
                [*command, "--model-repository", str(repository)], stdout=out, stderr=out
            )
        failed = {
            repository: f"seeding {repository}/ failed (exit {process.wait()}): see {log}"
            for repository, process in waiting.items()
            if process.wait() != 0
        }
    return {
        name: failed[KNOWN[name].repository]
        for name in frameworks
        if KNOWN[name].repository in failed
    }


class LocalStack:
    """The services, the gateway and the echo floor on this machine, for one device."""

    def __init__(self, models: Path, logs: Path) -> None:
        self.models = models
        self.logs = logs
        self.processes: list[Process] = []
        # Why a framework's service did not start (the last `start`): the others still run.
        self.failures: dict[str, str] = {}

    def start(self, device: str, frameworks: tuple[str, ...], *, echo: bool) -> Endpoints:
        """Starts each of `frameworks`' services on `device` (in parallel), a gateway in front
        of those that started, and the echo floor if asked. One that fails is left out, its
        reason in `failures` (a host without TensorFlow still measures PyTorch); RuntimeError
        if none starts."""
        env = {
            "TWINSERVE_DEVICE": device,
            "TWINSERVE_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        endpoints = Endpoints()
        log = self.logs / f"services-{device.replace(':', '-')}.log"
        with _stderr_to(log), ThreadPoolExecutor(len(frameworks) + 1) as pool:
            started = {
                name: pool.submit(
                    launch,
                    f"{name}-{device}",
                    KNOWN[name].module,
                    ["--model-repository", str(repository_of(self.models, KNOWN[name]))],
                    env=env,
                )
                for name in frameworks
            }
            floor = pool.submit(launch, "echo", "benchmarks.echo_server") if echo else None
            self.failures = {}
            for name, future in started.items():
                try:
                    process = future.result()
                except RuntimeError as exc:
                    self.failures[name] = f"{exc} (on {device}; log: {log})"
                    continue
                self.processes.append(process)
                endpoints.direct[name] = process.address
            if floor is not None:
                try:
                    self.processes.append(floor.result())
                    endpoints.echo = self.processes[-1].address
                except RuntimeError as exc:
                    self.failures["echo"] = f"{exc} (log: {log})"
            if not endpoints.direct and frameworks:
                raise RuntimeError("; ".join(f"{n}: {why}" for n, why in self.failures.items()))
            if endpoints.direct:
                gateway = launch(
                    f"gateway-{device}",
                    "gateway",
                    env={
                        **gateway_frameworks(endpoints.direct),
                        "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
                    },
                )
                self.processes.append(gateway)
                endpoints.gateway = gateway.address
        return endpoints

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []
