"""Serving latency while a training job runs on the same service.

    python -m benchmarks.train_impact --requests 1500

For each framework service: house_price requests at concurrency 1 with the service idle, then
while it trains the digits CNN (a job started over gRPC), then idle again (the two idle phases
bracket the busy one, so drift shows). The job is cancelled once the busy phase is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.serving import price_request
from devtools.frameworks import frameworks
from devtools.stack import Process, launch, seed
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc


def _measure(stub: pb_grpc.GRPCInferenceServiceStub, count: int) -> np.ndarray:
    request = price_request()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        stub.ModelInfer(request, timeout=10)
        samples.append(time.perf_counter() - start)
    return np.array(samples) * 1000


def _row(name: str, phase: str, ms: np.ndarray) -> str:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"| {name} | {phase} | {p50:.3f} | {p90:.3f} | {p99:.3f} |"


def _bench(process: Process, requests: int) -> list[str]:
    rows: list[str] = []
    with grpc.insecure_channel(process.address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel)
        training = tpb_grpc.TrainingServiceStub(channel)
        _measure(infer, 200)  # warm-up
        idle = _measure(infer, requests)
        order = tpb.TrainRequest(
            model_name="digits_bench", architecture="cnn", dataset=tpb.Dataset(builtin="digits")
        )
        order.hyperparameters.epochs = 1000
        stream = training.Train(order)
        job_id = next(iter(stream)).job_id
        progress = iter(stream)
        next(progress)  # the first epoch is done: training is in full swing
        busy = _measure(infer, requests)
        training.CancelJob(tpb.JobRequest(job_id=job_id))
        for _ in progress:
            pass
        again = _measure(infer, requests)
    rows.append(_row(process.name, "idle", idle))
    rows.append(_row(process.name, "training cnn", busy))
    rows.append(_row(process.name, "idle again", again))
    ratio = np.median(busy) / np.median(np.concatenate([idle, again]))
    rows.append(f"| {process.name} | p50 training / idle | {ratio:.2f}x | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_impact")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--models", type=Path, default=Path("models"))
    opts = parser.parse_args()
    rows: list[str] = []
    trainers = {name: f for name, f in frameworks().items() if f.trains}
    seed(opts.models, trainers)
    for name, framework in trainers.items():
        repository = opts.models / framework.repository
        process = launch(
            name,
            framework.module,
            ["--model-repository", str(repository)],
            env={
                "TWINSERVE_LOG_LEVEL": "WARNING",
                "TWINSERVE_TENSORBOARD_DIR": str(opts.models / "runs"),
            },
        )
        try:
            rows.extend(_bench(process, opts.requests))
        finally:
            process.stop()
    print(f"# house_price latency (ms), batch 1, concurrency 1, {opts.requests} requests a phase")
    print("| service | phase | p50 | p90 | p99 |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
