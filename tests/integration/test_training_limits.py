"""Training orders sized or shaped by the client, through real gRPC services: a job past the
service's limits is refused with RESOURCE_EXHAUSTED before anything is built, a malformed
inline tensor with INVALID_ARGUMENT, and a job that would change the inputs or outputs of a
served model with FAILED_PRECONDITION (at submit, or when it commits) unless the request says
`replace_signature`, directly and through the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from devtools import cli
from gateway.server import Gateway
from serving.app.server import Service
from serving.backend import TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.training.seed import SEED_MODEL, seed_repository
from serving.training.trainer import train_version

from .oip import eventually, rpc_error
from .training import inline, kinds, line, predict, train_request, version_dirs

Stub = pb_grpc.GRPCInferenceServiceStub
Training = tpb_grpc.TrainingServiceStub
S = tpb.JobState
OK = pytest.approx
EPOCH_S = 0.02


@dataclass
class Setup:
    service: Service
    repository: Path
    stub: Stub
    training: Training

    def train(self, request: tpb.TrainRequest) -> list[tpb.TrainEvent]:
        return list(self.training.Train(request, timeout=30))

    def jobs(self) -> int:
        return len(self.training.ListJobs(tpb.ListJobsRequest()).jobs)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _setup(
    aio: Any, stack: ExitStack, root: Path, backend: AffineBackend, **settings: Any
) -> Setup:
    repository = root / "models"
    (root / "data").mkdir()
    service = stack.enter_context(
        aio.service(
            repository, backend, data_dir=root / "data", tensorboard_dir=root / "runs", **settings
        )
    )
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
    return Setup(service, repository, Stub(channel), Training(channel))


@pytest.fixture(scope="module")
def default(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A service with the default limits, seeded with house_price, slow epochs."""
    with ExitStack() as stack:
        root = tmp_path_factory.mktemp("limits")
        seed_repository(ModelRepository(root / "models"), AffineBackend())
        yield _setup(aio, stack, root, AffineBackend(epoch_delay=EPOCH_S))


@pytest.fixture(scope="module")
def tight(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A service with small limits, each reachable with a few numbers."""
    with ExitStack() as stack:
        yield _setup(
            aio,
            stack,
            tmp_path_factory.mktemp("tight"),
            AffineBackend(),
            train_max_classes=3,
            train_max_input_values=30,
            train_max_parameters=6_000,
            train_max_data_values=200,
            train_max_batch_values=190,
        )


def _refused(setup: Setup, request: tpb.TrainRequest, code: grpc.StatusCode, match: str) -> str:
    before = (_files(setup.repository), setup.jobs())
    got, details = rpc_error(setup.train, request)
    assert got == code, details
    assert match in details, details
    # Refused before a job exists: nothing queued, nothing written.
    assert (_files(setup.repository), setup.jobs()) == before
    return details


# ---- the orders, against the default limits ----


def test_a_class_label_of_a_billion_is_refused(default: Setup) -> None:
    images = np.zeros((4, 8, 8, 1), np.float32)
    request = train_request("billion", inline(images, [0, 1, 0, 1e9]), architecture="cnn")
    details = _refused(default, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "1000000001 classes")
    assert "at most 1000 (TWINSERVE_TRAIN_MAX_CLASSES)" in details


def test_two_2048_pixel_images_are_refused(default: Setup) -> None:
    images = np.zeros((2, 2048, 2048, 1), np.float32)  # a 32 MiB request
    request = train_request("big-images", inline(images, [0, 1]), architecture="cnn")
    details = _refused(default, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "holds 4194304 values")
    assert "at most 65536 (TWINSERVE_TRAIN_MAX_INPUT_VALUES)" in details


@pytest.mark.parametrize("rank", [5, 65, 300])
def test_inline_tensors_of_too_many_dimensions_are_invalid(default: Setup, rank: int) -> None:
    request = train_request("ranked", line(1, 0))
    request.dataset.inline.inputs.shape[:] = [1] * rank
    del request.dataset.inline.inputs.values[1:]
    _refused(
        default,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        f"inline inputs have {rank} dimensions; at most 4 ([N, H, W, C])",
    )


def test_a_shape_of_huge_dimensions_is_refused_at_once(default: Setup) -> None:
    # 30,000 dimensions of 2**62: multiplied out first, this held the event loop for seconds.
    request = train_request("huge-shape", line(1, 0))
    request.dataset.inline.targets.shape[:] = [2**62] * 30_000
    start = time.monotonic()
    _refused(
        default, request, grpc.StatusCode.INVALID_ARGUMENT, "inline targets have 30000 dimensions"
    )
    assert time.monotonic() - start < 5.0  # 25 s before the fix; room for a loaded machine


# ---- each limit, against a service with small ones ----


def _rows(n: int, features: int) -> tpb.Dataset:
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return inline(x, x[:, :1] * 2 + 1)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        pytest.param(
            train_request(
                "classes", inline(np.zeros((4, 4, 4, 1)), [0, 1, 2, 3]), architecture="cnn"
            ),
            "at most 3 (TWINSERVE_TRAIN_MAX_CLASSES)",
            id="classes",
        ),
        pytest.param(
            train_request("row", _rows(4, 31), architecture="mlp"),
            "one training row holds 31 values",
            id="input-values",
        ),
        pytest.param(
            train_request("params", _rows(4, 27), architecture="mlp"),
            "has 6017 parameters; this service trains at most 6000",
            id="parameters",
        ),
        pytest.param(train_request("data", _rows(201, 1)), "hold 201 values", id="data-values"),
        pytest.param(
            train_request("batch", _rows(50, 4), architecture="mlp", batch_size=48),
            "a batch of 48 rows of 4 values",
            id="batch-values",
        ),
    ],
)
def test_a_job_past_a_limit_is_resource_exhausted(
    tight: Setup, request_: tpb.TrainRequest, match: str
) -> None:
    _refused(tight, request_, grpc.StatusCode.RESOURCE_EXHAUSTED, match)


def test_a_job_at_the_limits_trains(tight: Setup) -> None:
    # 26 features: 26 * 64 + 64 + 4160 + 65 = 5953 parameters; 7 rows: 182 values.
    events = tight.train(train_request("at-limits", _rows(7, 26), architecture="mlp"))
    assert events[-1].state == S.JOB_STATE_SUCCEEDED
    request = train_request("at-batch", _rows(50, 4), architecture="mlp", batch_size=47)
    assert tight.train(request)[-1].state == S.JOB_STATE_SUCCEEDED


def test_a_csv_past_a_limit_is_refused_while_read(tight: Setup) -> None:
    data = tight.service.jobs.data_dir
    (data / "wide.csv").write_text(
        ",".join(f"c{i}" for i in range(40)) + "\n" + ",".join(["1"] * 40) + "\n"
    )
    (data / "long.csv").write_text("a,b\n" + "1,2\n" * 201)
    for name, match in (("wide.csv", "has 40 columns"), ("long.csv", "more than 200 feature")):
        request = train_request(name, tpb.Dataset(csv=tpb.CsvData(path=name)))
        _refused(tight, request, grpc.StatusCode.RESOURCE_EXHAUSTED, match)


# ---- who may change a served model's signature ----


def test_a_new_signature_is_refused_unless_replace_signature(default: Setup) -> None:
    # house_price is served taking `size_sqft`; trained on other data its input is `input`.
    before = version_dirs(default.repository, SEED_MODEL)
    request = train_request(SEED_MODEL, line(2, 0))
    details = _refused(default, request, grpc.StatusCode.FAILED_PRECONDITION, "replace_signature")
    assert "inputs (size_sqft FP32 [-1, 1]) -> outputs (price_k FP32 [-1, 1])" in details
    assert "inputs (input FP32 [-1, 1]) -> outputs (output FP32 [-1, 1])" in details
    assert version_dirs(default.repository, SEED_MODEL) == before
    assert _predict_seed(default.stub) == OK(360.0, abs=1e-3)

    # The same signature retrains as before.
    assert default.train(train_request("sig", line(3, 1)))[-1].finished.version == 1
    assert default.train(train_request("sig", line(5, 0)))[-1].finished.version == 2
    wider = inline(np.ones((6, 2)) * np.arange(6).reshape(-1, 1), np.arange(6).reshape(-1, 1))
    _refused(
        default,
        train_request("sig", wider, architecture="mlp"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "inputs (input FP32 [-1, 2])",
    )

    # Asked for, the signature is replaced and the new version served at once.
    replaced = train_request("sig", wider, architecture="mlp")
    replaced.replace_signature = True
    events = default.train(replaced)
    assert events[-1].finished.version == 3
    metadata = default.stub.ModelMetadata(pb.ModelMetadataRequest(name="sig"))
    assert (list(metadata.versions), list(metadata.inputs[0].shape)) == (["3"], [-1, 2])


def _predict_seed(stub: Stub, metadata: Any = None) -> float:
    request = pb.ModelInferRequest(model_name=SEED_MODEL)
    request.inputs.add(name="size_sqft", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[1800.0]], np.float32).tobytes())
    response = stub.ModelInfer(request, metadata=metadata)
    return float(np.frombuffer(response.raw_output_contents[0], "<f4")[0])


def test_a_signature_changed_while_a_job_runs_fails_it_at_commit(default: Setup) -> None:
    assert default.train(train_request("race", line(3, 1)))[-1].finished.version == 1
    call = default.training.Train(train_request("race", line(4, 0), epochs=150), timeout=30)
    started, first = next(call), next(call)
    assert (started.WhichOneof("event"), first.progress.epoch) == ("started", 1)
    # Meanwhile another writer stores a version that takes two features.
    x = np.ones((8, 2), np.float32) * np.arange(8, dtype=np.float32).reshape(-1, 1)
    spec = TrainSpec("mlp", x=x, y=x[:, :1], x_val=x[:0], y_val=x[:0, :1])
    version, _ = train_version(
        ModelRepository(default.repository),
        AffineBackend(),
        "race",
        spec,
        "other",
        replace_signature=True,
    )
    assert version == 2
    rest = list(call)
    assert rest[-1].state == S.JOB_STATE_FAILED
    assert "model 'race' serves inputs (input FP32 [-1, 2])" in rest[-1].error
    assert "replace_signature" in rest[-1].error
    assert version_dirs(default.repository, "race") == ["1", "2"]


def test_a_queued_job_is_refused_when_the_one_before_it_changes_the_signature(
    default: Setup,
) -> None:
    assert default.train(train_request("queued", line(3, 1)))[-1].finished.version == 1
    wider = inline(np.ones((6, 2)) * np.arange(6).reshape(-1, 1), np.arange(6).reshape(-1, 1))
    first = train_request("queued", wider, architecture="mlp", epochs=150)
    first.replace_signature = True
    running = default.training.Train(first, timeout=30)
    assert next(running).WhichOneof("event") == "started"
    # Accepted: what is served now still takes one feature.
    waiting = default.training.Train(train_request("queued", line(2, 0)), timeout=30)
    assert list(running)[-1].finished.version == 2
    events = list(waiting)
    assert kinds(events) == ["started", "error"]
    assert events[-1].state == S.JOB_STATE_FAILED
    assert "inputs (input FP32 [-1, 2])" in events[-1].error
    assert version_dirs(default.repository, "queued") == ["1", "2"]


# ---- through the gateway ----


@pytest.fixture(scope="module")
def gateway(aio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Setup, Gateway]]:
    with ExitStack() as stack:
        root = tmp_path_factory.mktemp("gateway-sig")
        seed_repository(ModelRepository(root / "models"), AffineBackend(framework="pytorch"))
        side = _setup(aio, stack, root, AffineBackend(framework="pytorch"))
        front = stack.enter_context(
            aio.gateway(
                pytorch_url=f"127.0.0.1:{side.service.port}",
                default_framework="pytorch",
                health_interval_s=0.2,
            )
        )
        yield side, front


def test_the_gateway_forwards_replace_signature(gateway: tuple[Setup, Gateway]) -> None:
    side, front = gateway
    with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
        training, stub = Training(channel), Stub(channel)
        assert eventually(lambda: _ready(stub))
        before = version_dirs(side.repository, SEED_MODEL)
        code, details = rpc_error(
            lambda: list(training.Train(train_request(SEED_MODEL, line(2, 0)), timeout=30))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "replace_signature" in details
        assert version_dirs(side.repository, SEED_MODEL) == before
        assert _predict_seed(stub) == OK(360.0, abs=1e-3)  # existing clients carry on

        request = train_request(SEED_MODEL, line(2, 0))
        request.replace_signature = True
        events = list(training.Train(request, timeout=30))
        assert events[-1].state == S.JOB_STATE_SUCCEEDED
        assert predict(stub, SEED_MODEL, [[3.0]])[1] == OK([6.0], abs=1e-4)


def _ready(stub: Stub) -> bool:
    try:
        return stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL)).ready
    except grpc.RpcError:
        return False


def test_the_cli_asks_to_replace_a_signature(
    default: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", f"127.0.0.1:{default.service.port}", "train", "--model", "cli-sig"]
    argv += ["--architecture", "mlp", "--dataset", "house_features", "--epochs", "1"]
    assert default.train(train_request("cli-sig", line(3, 1)))[-1].finished.version == 1
    for extra, code, shown in (
        ([], 1, "FAILED_PRECONDITION"),
        (["--replace-signature"], 0, "stored cli-sig version 2"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, *extra])
        captured = capsys.readouterr()
        assert int(exit_info.value.code or 0) == code
        assert shown in captured.out + captured.err
