"""Where the load goes: services this run starts on this machine (per device), or endpoints
that already run (a Compose stack, a Kubernetes Service), given by address."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devtools.frameworks import frameworks, gateway_frameworks, is_model_repository, repository_of
from devtools.stack import Process, launch

__all__ = ["FRAMEWORKS", "Endpoints", "LocalStack", "seed_models"]

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


def seed_models(models: Path, log: Path) -> None:
    """Trains the seed model (house_price) into each training framework's repository if
    missing (a framework that does not train serves one of those). Nothing is written into a
    user's Triton model repository, which every service serves as it is: house_price is then
    one more model, measured if it is there."""
    if is_model_repository(models):
        return
    waiting = []
    with log.open("ab") as out:
        for framework in KNOWN.values():
            repository = repository_of(models, framework)
            if not framework.trains or any(
                p.name.isdigit() for p in (repository / "house_price").glob("*")
            ):
                continue
            waiting.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        framework.module,
                        "seed",
                        "--model-repository",
                        str(repository),
                    ],
                    stdout=out,
                    stderr=out,
                )
            )
        for process in waiting:
            if process.wait() != 0:
                raise RuntimeError(f"seeding failed: see {log}")


class LocalStack:
    """The services, the gateway and the echo floor on this machine, for one device."""

    def __init__(self, models: Path, logs: Path) -> None:
        self.models = models
        self.logs = logs
        self.processes: list[Process] = []

    def start(self, device: str, frameworks: tuple[str, ...], *, echo: bool) -> Endpoints:
        """Starts each of `frameworks`' services on `device` (in parallel), a gateway in front
        of them, and the echo floor if asked. Raises RuntimeError if one fails to start."""
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
            failures = []
            for name, future in started.items():
                try:
                    process = future.result()
                except RuntimeError as exc:
                    failures.append(f"{name}: {exc}")
                    continue
                self.processes.append(process)
                endpoints.direct[name] = process.address
            if floor is not None:
                self.processes.append(floor.result())
                endpoints.echo = self.processes[-1].address
            if failures:
                raise RuntimeError(f"{'; '.join(failures)} (on {device}; log: {log})")
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
