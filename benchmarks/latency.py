"""Side-by-side latency of the house-price model: a bare gRPC echo server (the floor), each
framework direct and through the gateway; batch 1, concurrency 1, gRPC on loopback.

    python -m benchmarks.latency --requests 2000

Starts the stack itself (seeding models into --models if needed). The endpoints are measured
interleaved, one request to each in turn, so machine noise hits them alike; report the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serving import price_request
from devtools.frameworks import frameworks, gateway_frameworks
from devtools.stack import Process, launch, seed
from serving.pb import inference_pb2_grpc as pb_grpc


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--models", type=Path, default=Path("models"))
    opts = parser.parse_args()

    known = frameworks()
    seed(opts.models, known)
    started: list[Process] = []
    try:
        echo = launch("echo", "benchmarks.echo_server")
        started.append(echo)
        services: dict[str, Process] = {}
        for name, framework in known.items():
            repository = ["--model-repository", str(opts.models / framework.repository)]
            services[name] = launch(name, framework.module, repository)
            started.append(services[name])
        gw = launch(
            "gateway",
            "gateway",
            env={
                **gateway_frameworks({name: p.address for name, p in services.items()}),
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
        started.append(gw)
        targets: dict[str, tuple[str, str | None, str]] = {"echo floor": (echo.address, None, "")}
        for name, framework in known.items():
            for runtime in framework.runtimes:
                label = f"{name} direct" if runtime == "native" else f"{name} {runtime} direct"
                targets[label] = (
                    services[name].address,
                    None,
                    "" if runtime == "native" else runtime,
                )
        for name in known:
            targets[f"{name} via gateway"] = (gw.address, name, "")
        channels = {name: grpc.insecure_channel(addr) for name, (addr, _, _) in targets.items()}
        calls = {
            name: (
                pb_grpc.GRPCInferenceServiceStub(channels[name]).ModelInfer,
                price_request(framework=fw or "", runtime=rt),
            )
            for name, (_, fw, rt) in targets.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for i in range(opts.warmup + opts.requests):
            for name, (call, request) in calls.items():
                start = time.perf_counter()
                response = call(request, timeout=10)
                elapsed = time.perf_counter() - start
                value = np.frombuffer(response.raw_output_contents[0], np.float32)[0]
                if abs(value - 360.0) > 1.0:
                    raise SystemExit(f"{name} answered {value}, not 360")
                if i >= opts.warmup:
                    samples[name].append(elapsed)
        for channel in channels.values():
            channel.close()
    finally:
        for process in reversed(started):
            process.stop()

    print(f"# house_price, batch 1, concurrency 1, {opts.requests} requests each, interleaved")
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()}")
    floor = float(np.median(samples["echo floor"])) * 1000
    print("| endpoint | p50 ms | p90 ms | p99 ms | p50 / echo floor |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        p50, p90, p99 = np.percentile(np.array(values) * 1000, [50, 90, 99])
        print(f"| {name} | {p50:.3f} | {p90:.3f} | {p99:.3f} | {p50 / floor:.2f}x |")


if __name__ == "__main__":
    main()
