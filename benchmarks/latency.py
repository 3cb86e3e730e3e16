"""Side-by-side latency of the house-price model: a bare gRPC echo server (the floor), each
framework direct and through the gateway; batch 1, concurrency 1, gRPC on loopback.

    python -m benchmarks.latency --requests 2000

Starts the stack itself (seeding models into --models if needed). The endpoints are measured
interleaved, one request to each in turn, so machine noise hits them alike; report the ratios.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serving import price_request
from devtools.stack import Process, launch
from serving.pb import inference_pb2_grpc as pb_grpc


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--models", type=Path, default=Path("models"))
    opts = parser.parse_args()

    for module, sub in (("tf_service", "tensorflow"), ("torch_service", "pytorch")):
        subprocess.run(
            [sys.executable, "-m", module, "seed", "--model-repository", str(opts.models / sub)],
            check=True,
            capture_output=True,
        )
    started: list[Process] = []
    try:
        echo = launch("echo", "benchmarks.echo_server")
        started.append(echo)
        tf = launch(
            "tensorflow", "tf_service", ["--model-repository", str(opts.models / "tensorflow")]
        )
        started.append(tf)
        torch = launch(
            "pytorch", "torch_service", ["--model-repository", str(opts.models / "pytorch")]
        )
        started.append(torch)
        gw = launch(
            "gateway",
            "gateway",
            env={
                "TWINSERVE_GATEWAY_TENSORFLOW_URL": tf.address,
                "TWINSERVE_GATEWAY_PYTORCH_URL": torch.address,
                "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
        started.append(gw)
        targets = {
            "echo floor": (echo.address, None, ""),
            "tensorflow direct": (tf.address, None, ""),
            "tensorflow tflite direct": (tf.address, None, "tflite"),
            "tensorflow onnx direct": (tf.address, None, "onnx"),
            "pytorch direct": (torch.address, None, ""),
            "pytorch torchscript direct": (torch.address, None, "torchscript"),
            "pytorch onnx direct": (torch.address, None, "onnx"),
            "tensorflow via gateway": (gw.address, "tensorflow", ""),
            "pytorch via gateway": (gw.address, "pytorch", ""),
        }
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
