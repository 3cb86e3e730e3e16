"""`twinserve`: predict, train and inspect jobs through the gateway (or any service).

twinserve predict 1800 --framework pytorch           (house_price's shorthand)
twinserve predict MODEL --input ids='[[1,2,3]]' --input features=@f.npy [--output-dir out]
twinserve predict MODEL [--batch 4 --seed 1 | --zeros]   (inputs made from the metadata)
twinserve compare 1800 | MODEL [...] [--target tensorflow/onnx --target pytorch]
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

from devtools.inputs import (
    InputError,
    generate,
    given,
    infer_request,
    model_and_values,
    specs,
)
from devtools.outputs import print_answer, print_comparison
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM
from serving.rpc.security import BearerTokenClient
from serving.types import TensorSpec

__all__ = ["main"]

_BAR = 30
SHORTHAND_MODEL = "house_price"  # the seed model: `twinserve predict 1800`


def connect(url: str, *, tls_ca: Path | None = None, token: str | None = None) -> grpc.Channel:
    """A channel to `url`: TLS verified against `tls_ca` if given, and the bearer token on
    every call if given."""
    channel = (
        grpc.secure_channel(url, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
        if tls_ca is not None
        else grpc.insecure_channel(url)
    )
    return grpc.intercept_channel(channel, BearerTokenClient(token)) if token else channel


def _metadata(framework: str | None) -> tuple[tuple[str, str], ...] | None:
    return ((FRAMEWORK_HEADER, framework),) if framework else None


def model_inputs(
    channel: grpc.Channel, model: str, framework: str | None, timeout: float
) -> list[TensorSpec]:
    """The model's inputs (ModelMetadata, from `framework` if given)."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelMetadataRequest(name=model)
    return specs(stub.ModelMetadata(request, timeout=timeout, metadata=_metadata(framework)))


def build_request(
    args: argparse.Namespace, channel: grpc.Channel, framework: str | None
) -> tuple[pb.ModelInferRequest, list[float] | None]:
    """The request `predict`/`compare` send, and the shorthand's values (None otherwise):
    values go to the first input as FP32 rows (house_price's [-1, 1]); `--input`s are checked
    against the metadata; with neither, inputs are generated from it."""
    model, values = model_and_values(args.words, args.model, SHORTHAND_MODEL)
    inputs = model_inputs(channel, model, framework, args.timeout)
    if values:
        if args.inputs:
            raise InputError("give input values or --input NAME=VALUE, not both")
        shorthand = TensorSpec(inputs[0].name, "FP32", (-1, 1))
        data = np.asarray(values, dtype=np.float32).reshape(-1, 1)
        return infer_request(model, [shorthand], {shorthand.name: data}), values
    if args.inputs:
        arrays = given(inputs, args.inputs)
    else:
        arrays = generate(inputs, batch=args.batch, seed=args.seed, zero=args.zeros)
        made = ", ".join(f"{n} {list(a.shape)}" for n, a in arrays.items())
        kind = "zeros" if args.zeros else f"seed {args.seed}"
        print(f"generated inputs ({kind}): {made}", file=sys.stderr)
    return infer_request(model, inputs, arrays), None


def predict(
    channel: grpc.Channel, request: pb.ModelInferRequest, framework: str | None, timeout: float
) -> pb.ModelInferResponse:
    if framework:
        request.parameters[FRAMEWORK_PARAM].string_param = framework
    return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)


def compare(
    channel: grpc.Channel, request: pb.ModelInferRequest, targets: Sequence[str], timeout: float
) -> cpb.CompareResponse:
    """Asks the gateway for every target's answer to one request (targets "framework" or
    "framework/runtime"; none: every framework at its default runtime)."""
    wanted = [target.partition("/") for target in targets]
    return cpb_grpc.ComparisonServiceStub(channel).Compare(
        cpb.CompareRequest(
            infer_request=request.SerializeToString(),
            targets=[cpb.Target(framework=f, runtime=r) for f, _, r in wanted],
        ),
        timeout=timeout,
    )


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

    tensors = argparse.ArgumentParser(add_help=False)
    tensors.add_argument(
        "words",
        nargs="*",
        metavar="WORD",
        help="[MODEL] [VALUE ...]: the model (default: --model, else house_price), then "
        "house-price shorthand values, FP32 rows of the first input (a numeric model name "
        "needs --model)",
    )
    tensors.add_argument("--model", help="the model, as the first word")
    tensors.add_argument(
        "-i",
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input as inline JSON, @file.npy (its dtype must be the input's) or "
        "@file.json, repeatable; none: inputs generated from the model's metadata",
    )
    tensors.add_argument(
        "--batch", type=int, default=1, help="generated inputs: size of a variable first dim"
    )
    tensors.add_argument(
        "--seed", type=int, default=0, help="generated inputs: random values from this seed"
    )
    tensors.add_argument("--zeros", action="store_true", help="generated inputs: all zeros")
    tensors.add_argument("--timeout", type=float, default=10.0)

    p = commands.add_parser("predict", parents=[tensors], help="predict with a model")
    p.add_argument("--framework", help=_FRAMEWORK_HELP)
    p.add_argument("--output-dir", type=Path, help="write each output as <dir>/<output name>.npy")

    c = commands.add_parser(
        "compare", parents=[tensors], help="one prediction from several frameworks, compared"
    )
    c.add_argument(
        "--target",
        dest="targets",
        action="append",
        default=[],
        help="framework or framework/runtime, repeatable (default: every framework)",
    )

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
        infer, values = build_request(args, channel, args.framework)
        response = predict(channel, infer, args.framework, args.timeout)
        print_answer(response, values, args.output_dir, sys.stdout)
        return 0
    if args.command == "compare":
        # The metadata comes from the first target's framework: the model may live there only.
        first = args.targets[0].partition("/")[0] if args.targets else None
        infer, values = build_request(args, channel, first)
        answer = compare(channel, infer, args.targets, args.timeout)
        return print_comparison(answer, values, sys.stdout)
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
    except InputError as exc:
        # A usage error (argparse's status too): the input, what the model takes, what was given.
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        # Training jobs keep running on the service; `twinserve job ID --watch` re-attaches.
        print("\ninterrupted (a training job keeps running; see `twinserve jobs`)", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    main()
