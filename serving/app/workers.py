"""Several worker processes serving one port, so a service uses every core (Python runs one
request at a time per process, between framework calls).

The supervisor never imports a framework or creates a gRPC object: it reserves the port,
starts each worker as a fresh `python -m <service> serve` (nothing is inherited through
fork), and the workers bind the same port with SO_REUSEPORT, the kernel spreading new
connections over them. A worker that dies is started again; SIGTERM drains them all.

Each worker holds its own models, statistics and training jobs: a `GetJob` can land on a
worker other than the one training (the Train stream itself always reports its own job), and
a version trained by one worker is picked up by the others through repository polling.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.app.settings import ServiceSettings
from serving.rpc.server import write_port_file

__all__ = ["supervise"]

logger = logging.getLogger(__name__)

_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


@dataclass
class _Worker:
    index: int
    command: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] = field(init=False)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.popen = subprocess.Popen(self.command, env=self.env)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) a SO_REUSEPORT socket: port 0 becomes a concrete port that
    stays ours while workers come and go, and only listening sockets get connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _wait_for_ports(workers: list[_Worker], files: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for worker, path in zip(workers, files, strict=True):
        while not path.exists():
            if worker.popen.poll() is not None:
                raise RuntimeError(
                    f"worker {worker.index} exited with code {worker.popen.returncode} "
                    "before listening"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {worker.index} did not listen within {timeout:.0f}s")
            time.sleep(0.05)


def supervise(settings: ServiceSettings, module: str, *, start_timeout: float = 300.0) -> None:
    """Runs `settings.worker_count()` workers of `python -m module` until SIGTERM/SIGINT."""
    count = settings.worker_count()
    reserved = _reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    scratch = Path(tempfile.mkdtemp(prefix="twinserve-workers-"))
    files = [scratch / f"worker-{i}.port" for i in range(count)]
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    base_env = {
        **os.environ,
        "TWINSERVE_WORKERS": "1",
        "TWINSERVE_REUSE_PORT": "true",
        "TWINSERVE_FRAMEWORK_THREADS": str(settings.threads_per_worker()),
    }
    workers: list[_Worker] = []
    for index, port_file in enumerate(files):
        command = [
            sys.executable,
            "-m",
            module,
            "serve",
            "--host",
            settings.host,
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            "--model-repository",
            str(settings.model_repository),
        ]
        env = {**base_env, "TWINSERVE_WORKER_INDEX": str(index)}
        workers.append(_Worker(index, command, env))
    try:
        _wait_for_ports(workers, files, start_timeout)
        logger.info(
            "%d workers listening on %s:%d (%d framework threads each)",
            count,
            settings.host,
            port,
            settings.threads_per_worker(),
        )
        if settings.port_file is not None:
            write_port_file(settings.port_file, port)
        while not stopping:
            for worker in workers:
                code = worker.popen.poll()
                if code is None or stopping:
                    continue
                pause = _RESTART_BACKOFF_S[min(worker.restarts, len(_RESTART_BACKOFF_S) - 1)]
                logger.warning(
                    "worker %d exited with code %d; starting it again in %.1fs",
                    worker.index,
                    code,
                    pause,
                )
                time.sleep(pause)
                worker.restarts += 1
                worker.start()
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.popen.poll() is None:
                worker.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.grace_period_s + 10
        for worker in workers:
            try:
                worker.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.popen.kill()
                worker.popen.wait()
        reserved.close()
