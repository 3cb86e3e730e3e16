"""Triton's own load tool, the C++ perf_analyzer, against the gateway: concurrency 1 and 8 on
house_price, for each framework behind it. perf_analyzer reads ModelStatistics before and
after every measurement and stops with "Server side statistics compute counts must be the
same" unless compute_input, compute_infer and compute_output agree, summed over every service
that ran the calls.

The binary comes from `make perf-analyzer` (.tools/perf-analyzer), or TWINSERVE_PERF_ANALYZER,
or `perf_analyzer` on the PATH; without one that runs here the test skips, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from .endpoints import Endpoint, Stack
from .house_price import INPUT, MODEL

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "perf-analyzer"
CONCURRENCY = (1, 8)
RUN_TIMEOUT_S = 180.0
# "Concurrency: 8, throughput: 1799.91 infer/sec, latency 4434 usec"
SUMMARY = re.compile(r"^Concurrency: (\d+), throughput: ([0-9.e+]+) infer/sec", re.MULTILINE)


def _binary() -> Path | None:
    named = os.environ.get("TWINSERVE_PERF_ANALYZER")
    if named:
        return Path(named)
    bundled = TOOLS / "bin" / "perf_analyzer"
    if bundled.exists():
        return bundled
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def _environment() -> dict[str, str]:
    """The libcudart of `make perf-analyzer`'s runtime wheel on the library path (the binary
    links it; it is never used without a GPU)."""
    env = dict(os.environ)
    libraries = [str(p) for p in TOOLS.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib")]
    if libraries:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, env.get("LD_LIBRARY_PATH", "")])
    return env


# Session-scoped, like `stack`, so that it is set up first: a skip starts no servers.
@pytest.fixture(scope="session")
def perf_analyzer() -> Path:
    binary = _binary()
    if binary is None:
        pytest.skip("no perf_analyzer binary: `make perf-analyzer` installs one in .tools/")
    try:
        probe = subprocess.run(
            [str(binary), "--version"],
            check=False,
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=30,
        )
    except OSError as exc:
        pytest.skip(f"perf_analyzer at {binary} cannot run here: {exc}")
    if probe.returncode != 0:
        output = (probe.stdout + probe.stderr).strip()
        pytest.skip(f"perf_analyzer at {binary} cannot run here: {output[-500:]}")
    return binary


def _shape_option(address: str, headers: dict[str, str]) -> list[str]:
    """`--shape` for the input's variable dimensions (1 each), as the model's config gives
    them: all of them without a batch dimension, the rest after it."""
    client = grpcclient.InferenceServerClient(address)
    try:
        config = client.get_model_config(MODEL, headers=headers).config
    finally:
        client.close()
    (tensor,) = [t for t in config.input if t.name == INPUT]
    dims = [1 if dim < 0 else dim for dim in tensor.dims]
    if all(dim >= 0 for dim in tensor.dims):
        return []
    return ["--shape", f"{INPUT}:{','.join(str(d) for d in dims)}"]


@pytest.mark.parametrize("endpoint_id", ["gateway-tf", "gateway-torch"])
def test_perf_analyzer_through_the_gateway(
    perf_analyzer: Path, stack: Stack, endpoint_id: str
) -> None:
    endpoint: Endpoint = stack.endpoint(endpoint_id)
    headers = endpoint.headers or {}
    command = [
        str(perf_analyzer),
        *("-m", MODEL, "-i", "grpc", "-u", endpoint.address),
        *_shape_option(endpoint.address, headers),
        "--concurrency-range",
        f"{CONCURRENCY[0]}:{CONCURRENCY[1]}:{CONCURRENCY[1] - CONCURRENCY[0]}",
        # Short windows; a shared 2-core machine is never steady to perf_analyzer's default
        # 10 %, so any three windows count as stable (the numbers are not the point here).
        *("-p", "1000", "-s", "1000", "--max-trials", "4"),
        *(arg for key, value in headers.items() for arg in ("-H", f"{key}:{value}")),
    ]
    run = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=RUN_TIMEOUT_S,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"perf_analyzer exited {run.returncode}:\n{output[-3000:]}"
    for bad in ("error", "failed", "must be the same"):
        assert bad not in output.lower(), f"perf_analyzer reported '{bad}':\n{output[-3000:]}"
    throughput = {int(c): float(t) for c, t in SUMMARY.findall(output)}
    assert sorted(throughput) == list(CONCURRENCY), output[-3000:]
    assert all(value > 0 for value in throughput.values()), throughput
    # Server-side statistics were read and broken down (compute input/infer/output).
    assert "compute input" in output and "compute output" in output, output[-3000:]
