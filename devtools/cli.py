"""`twinserve`: predict, train and inspect jobs through the gateway (or any service).

twinserve predict 1800 --framework pytorch
twinserve compare 1800 [--target tensorflow/onnx --target pytorch]
twinserve train --model digits --architecture cnn --dataset digits --framework tensorflow
twinserve jobs
twinserve job pytorch-0123abcd4567 --watch | --cancel
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import grpc
import numpy as np

from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.protocol.codec import decode_tensor
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM
from serving.rpc.security import BearerTokenClient

__all__ = ["main"]

_BAR = 30


def connect(url: str, *, tls_ca: Path | None = None, token: str | None = None) -> grpc.Channel:
    """A channel to `url`: TLS verified against `tls_ca` if given, and the bearer token on
    every call if given."""
    channel = (
        grpc.secure_channel(url, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
        if tls_ca is not None
        else grpc.insecure_channel(url)
    )
    return grpc.intercept_channel(channel, BearerTokenClient(token)) if token else channel


def predict(
    url: str,
    model: str,
    values: list[float],
    framework: str | None,
    timeout: float,
    *,
    tls_ca: Path | None = None,
    token: str | None = None,
) -> tuple[pb.ModelInferResponse, np.ndarray]:
    metadata = ((FRAMEWORK_HEADER, framework),) if framework else None
    with connect(url, tls_ca=tls_ca, token=token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model), timeout=timeout, metadata=metadata
        )
        spec = meta.inputs[0]
        request = pb.ModelInferRequest(model_name=model)
        data = np.asarray(values, dtype=np.float32).reshape(-1, 1)
        request.inputs.add(name=spec.name, datatype="FP32", shape=data.shape)
        request.raw_input_contents.append(data.tobytes())
        if framework:
            request.parameters[FRAMEWORK_PARAM].string_param = framework
        response = stub.ModelInfer(request, timeout=timeout)
    output = response.outputs[0]
    result = decode_tensor(
        output.name, output.datatype, output.shape, response.raw_output_contents[0]
    )
    return response, result


def compare(
    channel: grpc.Channel, model: str, values: list[float], targets: Sequence[str], timeout: float
) -> cpb.CompareResponse:
    """Asks the gateway for every target's answer to one request (targets "framework" or
    "framework/runtime"; none: every framework at its default runtime)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    spec = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=timeout).inputs[0]
    request = pb.ModelInferRequest(model_name=model)
    data = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    request.inputs.add(name=spec.name, datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    wanted = [target.partition("/") for target in targets]
    return cpb_grpc.ComparisonServiceStub(channel).Compare(
        cpb.CompareRequest(
            infer_request=request.SerializeToString(),
            targets=[cpb.Target(framework=f, runtime=r) for f, _, r in wanted],
        ),
        timeout=timeout,
    )


def print_comparison(answer: cpb.CompareResponse, values: list[float], out: TextIO) -> int:
    """Each target's answers, then the differences; 1 if a target failed."""
    names = [f"{r.target.framework}/{r.target.runtime or 'default'}" for r in answer.results]
    width = max((len(name) for name in names), default=0)
    for name, result in zip(names, answer.results, strict=True):
        if result.status.code:
            print(f"{name:<{width}}  {result.status.name}: {result.status.message}", file=out)
            continue
        head = f"{name:<{width}}  v{result.model_version}  {result.latency_ms:7.1f} ms"
        for output in result.outputs:
            rows = np.asarray(output.values).reshape(len(values), -1)
            for value, row in zip(values, rows, strict=True):
                shown = ", ".join(f"{x:.2f}" for x in row)
                print(f"{head}  {output.name}: {value:g} -> {shown}", file=out)
    for gap in answer.differences:
        size = f"{gap.max_abs_diff:.4g}" if gap.HasField("max_abs_diff") else gap.note
        print(
            f"max abs difference {names[gap.first]} vs {names[gap.second]} ({gap.output}): {size}",
            file=out,
        )
    return 1 if any(result.status.code for result in answer.results) else 0


def _train_request(args: argparse.Namespace) -> tpb.TrainRequest:
    request = tpb.TrainRequest(
        framework=args.framework or "",
        model_name=args.model,
        architecture=args.architecture,
        device=args.device,
        replace_signature=args.replace_signature,
    )
    if args.csv:
        request.dataset.csv.path = args.csv
        request.dataset.csv.feature_columns.extend(args.features or [])
        request.dataset.csv.target_column = args.target or ""
    else:
        request.dataset.builtin = args.dataset
    hp = request.hyperparameters
    for field in ("epochs", "batch_size", "learning_rate", "optimizer", "seed", "validation_split"):
        value = getattr(args, field)
        if value is not None:
            setattr(hp, field, value)
    return request


def _describe(progress: tpb.EpochProgress) -> str:
    parts = [f"epoch {progress.epoch}/{progress.epochs}", f"loss {progress.train_loss:.4g}"]
    if progress.HasField("val_metric"):
        parts.append(f"val {progress.metric} {progress.val_metric:.4g}")
    parts.append(f"{progress.samples_per_second:,.0f} samples/s")
    parts.append(f"eta {progress.eta_seconds:.0f}s")
    return "  ".join(parts)


def follow(events: Iterable[tpb.TrainEvent], out: TextIO) -> int:
    """Prints a job's events (a progress bar on a terminal); returns an exit status."""
    live = out.isatty()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "started":
            job = event.started
            print(
                f"job {job.job_id}: {job.framework} {job.architecture} on {job.dataset}, "
                f"{job.epochs} epochs -> model {job.model_name}",
                file=out,
            )
        elif kind == "progress":
            p = event.progress
            done = int(_BAR * p.epoch / max(p.epochs, 1))
            line = f"[{'#' * done}{'.' * (_BAR - done)}] {_describe(p)}"
            print(f"\r{line}", end="" if live else "\n", file=out, flush=True)
        elif kind == "finished":
            result = event.finished
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.metrics.items()))
            print(
                f"\nstored {result.model_name} version {result.version} at {result.path}"
                f"\n{metrics}",
                file=out,
            )
            return 0
        elif kind == "error":
            state = tpb.JobState.Name(event.state).removeprefix("JOB_STATE_").lower()
            print(f"\njob {event.job_id} {state}: {event.error}", file=out)
            return 1
    return 1


def _jobs_table(jobs: Iterable[tpb.Job], out: TextIO) -> None:
    print(f"{'job':<28} {'state':<10} {'model':<18} {'architecture':<12} epoch  result", file=out)
    for job in jobs:
        state = tpb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        result = f"v{job.result.version}" if job.HasField("result") else job.error[:40]
        print(
            f"{job.job_id:<28} {state:<10} {job.model_name:<18} {job.architecture:<12} "
            f"{job.epoch:>3}/{job.epochs:<3} {result}",
            file=out,
        )


# The gateway knows its frameworks (its settings) and refuses any other name, naming its set.
_FRAMEWORK_HELP = "a framework the gateway serves (default: the model's)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twinserve")
    parser.add_argument("--url", default="localhost:8001", help="gateway or service address")
    parser.add_argument(
        "--tls-ca", type=Path, help="connect with TLS, verifying the server against this CA file"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TWINSERVE_TOKEN"),
        help="bearer token sent as 'authorization: Bearer ...' (default: $TWINSERVE_TOKEN)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="predict with a model")
    p.add_argument("values", nargs="+", type=float, help="input values (house sizes in sq ft)")
    p.add_argument("--model", default="house_price")
    p.add_argument("--framework", help=_FRAMEWORK_HELP)
    p.add_argument("--timeout", type=float, default=10.0)

    c = commands.add_parser("compare", help="one prediction from several frameworks, compared")
    c.add_argument("values", nargs="+", type=float, help="input values (house sizes in sq ft)")
    c.add_argument("--model", default="house_price")
    c.add_argument(
        "--target",
        dest="targets",
        action="append",
        default=[],
        help="framework or framework/runtime, repeatable (default: every framework)",
    )
    c.add_argument("--timeout", type=float, default=10.0)

    t = commands.add_parser("train", help="train a new model version and follow it")
    t.add_argument("--model", required=True)
    t.add_argument("--architecture", required=True, choices=("linear", "mlp", "cnn"))
    t.add_argument(
        "--dataset",
        default="house_price",
        help="built-in dataset: house_price, house_features, digits",
    )
    t.add_argument("--csv", help="CSV file under the service's data directory")
    t.add_argument("--features", type=lambda s: s.split(","), help="CSV feature columns a,b,c")
    t.add_argument("--target", help="CSV target column")
    t.add_argument("--framework", help=_FRAMEWORK_HELP)
    t.add_argument("--device", default="")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--learning-rate", dest="learning_rate", type=float)
    t.add_argument("--optimizer", choices=("adam", "sgd"))
    t.add_argument("--seed", type=int)
    t.add_argument("--validation-split", dest="validation_split", type=float)
    t.add_argument(
        "--replace-signature",
        dest="replace_signature",
        action="store_true",
        help="store the version even if its inputs/outputs differ from the served version's",
    )

    j = commands.add_parser("jobs", help="list training jobs")
    j.add_argument("--framework", help=_FRAMEWORK_HELP)
    j.add_argument("--model", default="")

    one = commands.add_parser("job", help="show, follow or cancel one job")
    one.add_argument("job_id")
    action = one.add_mutually_exclusive_group()
    action.add_argument("--watch", action="store_true")
    action.add_argument("--cancel", action="store_true")
    return parser


def _run(args: argparse.Namespace, channel: grpc.Channel) -> int:
    training = tpb_grpc.TrainingServiceStub(channel)
    if args.command == "predict":
        response, result = predict(
            args.url,
            args.model,
            args.values,
            args.framework,
            args.timeout,
            tls_ca=args.tls_ca,
            token=args.token,
        )
        served_by = response.parameters[FRAMEWORK_PARAM].string_param or "?"
        for value, answer in zip(args.values, result.ravel(), strict=True):
            print(
                f"{response.model_name} v{response.model_version} ({served_by}): "
                f"{value:g} -> {answer:.2f}"
            )
        return 0
    if args.command == "compare":
        answer = compare(channel, args.model, args.values, args.targets, args.timeout)
        return print_comparison(answer, args.values, sys.stdout)
    if args.command == "train":
        return follow(training.Train(_train_request(args)), sys.stdout)
    if args.command == "jobs":
        jobs = training.ListJobs(
            tpb.ListJobsRequest(framework=args.framework or "", model_name=args.model)
        )
        _jobs_table(jobs.jobs, sys.stdout)
        return 0
    request = tpb.JobRequest(job_id=args.job_id)
    if args.watch:
        return follow(training.WatchJob(request), sys.stdout)
    job = training.CancelJob(request) if args.cancel else training.GetJob(request)
    _jobs_table([job], sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        with connect(args.url, tls_ca=args.tls_ca, token=args.token) as channel:
            status = _run(args, channel)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        # Training jobs keep running on the service; `twinserve job ID --watch` re-attaches.
        print("\ninterrupted (a training job keeps running; see `twinserve jobs`)", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
