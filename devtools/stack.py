"""Runs the whole stack on this machine (`make run`): the TensorFlow service, the PyTorch
service and the gateway as child processes, and stops them together.

`launch` is also what the tests use to start real servers on port 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Process", "launch"]


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.stack")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--gateway-port", type=int, default=8001)
    parser.add_argument("--tensorflow-port", type=int, default=8500)
    parser.add_argument("--pytorch-port", type=int, default=7070)
    # Prometheus /metrics of each (deploy/monitoring/prometheus.yml scrapes these).
    parser.add_argument("--gateway-metrics-port", type=int, default=8002)
    parser.add_argument("--tensorflow-metrics-port", type=int, default=8502)
    parser.add_argument("--pytorch-metrics-port", type=int, default=7072)
    opts = parser.parse_args(argv)

    started: list[Process] = []
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        tf = launch(
            "tensorflow",
            "tf_service",
            port=opts.tensorflow_port,
            args=["--model-repository", str(opts.models / "tensorflow")],
            env={"TWINSERVE_METRICS_PORT": str(opts.tensorflow_metrics_port)},
        )
        started.append(tf)
        torch = launch(
            "pytorch",
            "torch_service",
            port=opts.pytorch_port,
            args=["--model-repository", str(opts.models / "pytorch")],
            env={"TWINSERVE_METRICS_PORT": str(opts.pytorch_metrics_port)},
        )
        started.append(torch)
        gateway = launch(
            "gateway",
            "gateway",
            port=opts.gateway_port,
            env={
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": tf.address,
                "TWINSERVE_GATEWAY_PYTORCH_URL": torch.address,
                "TWINSERVE_GATEWAY_METRICS_PORT": str(opts.gateway_metrics_port),
            },
        )
        started.append(gateway)
        print(
            f"\ntwinserve is up:\n"
            f"  gateway     {gateway.address}   (Open Inference Protocol, gRPC)\n"
            f"  tensorflow  {tf.address}\n"
            f"  pytorch     {torch.address}\n"
            f"  metrics     http://127.0.0.1:{opts.gateway_metrics_port}/metrics (gateway), "
            f":{opts.tensorflow_metrics_port} (tensorflow), :{opts.pytorch_metrics_port} "
            "(pytorch)\n\n"
            f"try:  .venv/bin/twinserve predict 1800 --framework tensorflow\n"
            f"      .venv/bin/twinserve predict 1800 --framework pytorch\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop_requested and all(p.popen.poll() is None for p in started):
            time.sleep(0.2)
    finally:
        for process in reversed(started):
            process.stop()


if __name__ == "__main__":
    main()
