"""The serving benchmark (`make bench`): in one run, the echo floor, each service direct with
each runtime, with two worker processes, through the gateway, a compute-heavy model with
batching off and on, and (when their virtual environments are given) the peers KServe and
MLServer; every target driven by the same load generator (`loadtest.generator`).

    python -m benchmarks.serving --duration 3 --rounds 3 --soak-s 300 --write docs/benchmarks.md

Two figures per target: p50/p90/p99 latency at concurrency 1 and throughput at concurrency 32.
Targets are measured in turn, round after round; each figure is the median over rounds and
every ratio is taken to the floor of the same round, so a noisy spell hits a round, not one
target. Every answer is checked during the run (a wrong answer fails the target). Resident
memory of each service is read after warm-up and, with --soak-s, after a soak at concurrency 16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks.peers import PEERS, start_peer
from devtools.frameworks import Framework, frameworks, gateway_frameworks
from devtools.stack import Process, launch, seed
from loadtest.checks import OutputClose
from loadtest.generator import ClientPool
from loadtest.report import machine
from loadtest.result import LoadResult
from loadtest.workloads import ModelSpec, ensure_model
from serving.engine.model_config import CONFIG_FILE
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.names import FRAMEWORK_PARAM, RUNTIME_PARAM

CNN = ModelSpec("bench_cnn", "cnn", "digits", "image", "probabilities")
BATCHED = "bench_cnn_batched"
BATCHING = {
    "max_batch_size": 32,
    "dynamic_batching": {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [16, 32]},
}
QUIET = {"TWINSERVE_LOG_LEVEL": "WARNING", "TWINSERVE_REPOSITORY_POLL_S": "0"}
MARK_BEGIN = "<!-- bench:serving:begin -->"
MARK_END = "<!-- bench:serving:end -->"


@dataclass
class Target:
    name: str
    address: str
    request: pb.ModelInferRequest
    output: str
    expected: np.ndarray
    atol: float
    latency: list[LoadResult] = field(default_factory=list)  # concurrency 1, one per round
    load: list[LoadResult] = field(default_factory=list)  # concurrency 32, one per round
    failure: str = ""

    def checker(self) -> OutputClose:
        return OutputClose.of(self.output, self.expected, self.atol)


def price_request(
    model: str = "house_price", framework: str = "", runtime: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1800.0]], np.float32).tobytes())
    if framework:
        request.parameters[FRAMEWORK_PARAM].string_param = framework
    if runtime:
        request.parameters[RUNTIME_PARAM].string_param = runtime
    return request


def image_request(model: str) -> pb.ModelInferRequest:
    from serving.training.datasets import digits  # noqa: PLC0415 - scikit-learn, only for this model

    image = digits()[0][:1].astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=CNN.input_name, datatype="FP32", shape=list(image.shape))
    request.raw_input_contents.append(image.tobytes())
    return request


def _answer(address: str, request: pb.ModelInferRequest, output: str) -> np.ndarray:
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    index = [o.name for o in response.outputs].index(output)
    shape = tuple(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(shape)


def rss_mib(process: Process) -> float:
    """Resident memory of a service: its process and, for a worker supervisor, its workers."""
    pids = [process.popen.pid]
    found = subprocess.run(
        ["pgrep", "-P", str(pids[0])], capture_output=True, text=True, check=False
    )
    pids += [int(p) for p in found.stdout.split()]
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def batched_copy(repository: Path, address: str) -> None:
    """`bench_cnn_batched`: the same weights as `bench_cnn`, with dynamic batching on."""
    source, target = repository / CNN.name, repository / BATCHED
    if not target.exists():
        staging = target.with_name(f".incoming-{BATCHED}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(CONFIG_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps(BATCHING, indent=2) + "\n")
        staging.rename(target)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=BATCHED), timeout=120)


@contextmanager
def stack(
    models: Path, known: dict[str, Framework], cnn: str, peers: dict[str, str]
) -> Iterator[tuple[dict[str, Process], list[str]]]:
    """Starts everything (every framework's service, the CNN scenarios on framework `cnn`);
    yields the processes by name and notes on what could not start."""
    notes: list[str] = []
    with ExitStack() as stop:
        started: dict[str, Process] = {}

        def keep(name: str, process: Process) -> Process:
            started[name] = process
            stop.callback(process.stop)
            return process

        keep("echo", launch("echo", "benchmarks.echo_server"))
        services = {
            name: keep(name, launch(name, f.module, _repository(models, f), env=QUIET))
            for name, f in known.items()
        }
        heavy = services[cnn]
        print(ensure_model(CNN, cnn, heavy.address, via_gateway=False), flush=True)
        batched_copy(models / known[cnn].repository, heavy.address)
        two = {**QUIET, "TWINSERVE_WORKERS": "2"}
        repository = _repository(models, known[cnn])
        keep(f"{cnn} x2", launch(f"{cnn}-x2", known[cnn].module, repository, env=two))
        gateway_env = {
            **gateway_frameworks({name: p.address for name, p in services.items()}),
            "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
        }
        keep("gateway", launch("gateway", "gateway", env=gateway_env))
        for peer, python in peers.items():
            try:
                keep(peer, start_peer(peer, python))
            except RuntimeError as exc:
                notes.append(f"{peer}: {exc}")
        yield started, notes


def _repository(models: Path, framework: Framework) -> list[str]:
    return ["--model-repository", str(models / framework.repository)]


def targets(started: dict[str, Process], known: dict[str, Framework], cnn: str) -> list[Target]:
    found: list[Target] = []

    def price(name: str, process: str, request: pb.ModelInferRequest) -> None:
        if process in started:
            expected = np.array([[360.0]], np.float32)
            found.append(Target(name, started[process].address, request, "price_k", expected, 1))

    price("echo floor", "echo", price_request())
    for name, framework in known.items():
        for runtime in framework.runtimes:
            price(f"{name} {runtime}", name, price_request(runtime=runtime))
    price(f"{cnn} native, 2 workers", f"{cnn} x2", price_request())
    for name in known:
        price(f"gateway -> {name}", "gateway", price_request(framework=name))
    for peer in PEERS:
        price(f"peer: {peer}", peer, price_request())
    torch = started[cnn].address
    for name, model in (("cnn, batching off", CNN.name), ("cnn, batching on", BATCHED)):
        request = image_request(model)
        expected = _answer(torch, image_request(CNN.name), CNN.output_name)
        found.append(Target(name, torch, request, CNN.output_name, expected, 1e-4))
    return found


def measure(
    found: list[Target], rounds: int, duration: float, on_round: Callable[[int], None]
) -> None:
    with ClientPool() as pool:
        for round_index in range(rounds):
            for target in found:
                if target.failure:
                    continue
                for concurrency, results in ((1, target.latency), (32, target.load)):
                    result = pool.closed_loop(
                        target.address,
                        target.request,
                        concurrency=concurrency,
                        duration_s=duration,
                        warmup_s=0.5,
                        checker=target.checker(),
                    )
                    bad = result.wrong_answers + sum(result.errors.values())
                    if bad:
                        target.failure = (
                            f"{bad} bad answers at concurrency {concurrency}: "
                            f"{result.wrong_example or result.error_examples}"
                        )
                        break
                    results.append(result)
            on_round(round_index + 1)


def soak(started: dict[str, Process], found: list[Target], seconds: float) -> dict[str, float]:
    """Concurrency 16 on each service's main target for `seconds` in all; RSS growth in %."""
    before = {name: rss_mib(p) for name, p in started.items()}
    plan = [t for t in found if t.name in {f"{name} native" for name in started}]
    plan += [t for t in found if t.name.startswith("gateway") or t.name == "cnn, batching on"]
    if not plan:
        return {}
    slice_s = 10.0
    deadline = time.monotonic() + seconds
    with ClientPool() as pool:
        while time.monotonic() < deadline:
            for target in plan:
                result = pool.closed_loop(
                    target.address,
                    target.request,
                    concurrency=16,
                    duration_s=slice_s,
                    warmup_s=0,
                    checker=target.checker(),
                )
                if result.wrong_answers or result.errors:
                    raise SystemExit(f"soak: {target.name} failed: {result.errors}")
    return {name: 100 * (rss_mib(p) / before[name] - 1) for name, p in started.items()}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(found: list[Target], memory: dict[str, float], growth: dict[str, float]) -> str:
    floor = next(t for t in found if t.name == "echo floor")
    lines = [
        "| target | p50 ms | p90 ms | p99 ms | p50 / floor | req/s at c=32 | req/s / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in found:
        if target.failure or not target.latency:
            lines.append(f"| {target.name} | failed: {target.failure or 'no result'} ||||||")
            continue
        p = {k: _median([r.latency_ms()[k] for r in target.latency]) for k in ("p50", "p90", "p99")}
        # Ratios round by round (the floor measured minutes apart would mix in drift).
        ratio = _median(
            [
                t.latency_ms()["p50"] / f.latency_ms()["p50"]
                for t, f in zip(target.latency, floor.latency, strict=False)
            ]
        )
        rate = _median([r.throughput for r in target.load])
        rate_ratio = _median(
            [t.throughput / f.throughput for t, f in zip(target.load, floor.load, strict=False)]
        )
        lines.append(
            f"| {target.name} | {p['p50']:.3f} | {p['p90']:.3f} | {p['p99']:.3f} | "
            f"{ratio:.2f}x | {rate:,.0f} | {rate_ratio:.2f}x |"
        )
    lines += ["", "| process | RSS after warm-up MiB | growth over the soak |", "|---|---|---|"]
    for name, mib in memory.items():
        change = f"{growth[name]:+.1f} %" if name in growth else "not soaked"
        lines.append(f"| {name} | {mib:.0f} | {change} |")
    return "\n".join(lines)


def describe(opts: argparse.Namespace, notes: list[str]) -> str:
    info = machine()
    libraries = ", ".join(f"{k} {v}" for k, v in sorted(info["libraries"].items()))
    text = (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, GPU: "
        f"{', '.join(info['gpus'])}; Python {info['python']}; {libraries}. "
        f"{time.strftime('%Y-%m-%d')}, {opts.rounds} rounds of {opts.duration:.0f} s per "
        f"target and concurrency; client processes share the cores with the servers."
    )
    for note in notes:
        text += f"\n\nNot measured: {note}."
    return text


def write_section(path: Path, body: str) -> None:
    """Replaces the marked section of `path` (appends it the first time)."""
    text = path.read_text() if path.exists() else ""
    block = f"{MARK_BEGIN}\n{body}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak-s", type=float, default=0.0, help="memory soak at c=16")
    for peer in PEERS:
        parser.add_argument(f"--{peer}-python", help=f"a Python that has {peer} installed")
    parser.add_argument("--write", type=Path, help="put the table into this Markdown file")
    known = frameworks()
    # A setting, defaulting to the framework the published table (docs/benchmarks.md) ran
    # these targets on, so that its rows compare run to run.
    parser.add_argument(
        "--cnn-framework",
        default="pytorch",
        choices=[name for name, f in known.items() if f.trains],
        help="the framework of the CNN, batching and two-worker targets",
    )
    opts = parser.parse_args()

    seed(opts.models, known)
    peers = {p: getattr(opts, f"{p}_python") for p in PEERS if getattr(opts, f"{p}_python")}
    notes = [f"{p} (no --{p}-python given)" for p in PEERS if p not in peers]
    with stack(opts.models, known, opts.cnn_framework, peers) as (started, failed):
        notes += failed
        found = targets(started, known, opts.cnn_framework)
        memory = {name: rss_mib(p) for name, p in started.items() if name != "echo"}
        measure(
            found,
            opts.rounds,
            opts.duration,
            lambda r: print(f"round {r}/{opts.rounds} done", flush=True),
        )
        growth = soak(started, found, opts.soak_s) if opts.soak_s else {}
    body = describe(opts, notes) + "\n\n" + table(found, memory, growth)
    print(body)
    if opts.write:
        write_section(opts.write, body)


if __name__ == "__main__":
    main()
