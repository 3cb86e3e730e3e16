"""Token scopes through real gRPC servers: an `infer` token may infer and read, but Train,
CancelJob and RepositoryModelLoad/Unload need an `admin` token (the old `auth_tokens`
setting), on a service and on the gateway's own front; and the start-up warning when tokens
would travel in plaintext."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.server import Gateway
from serving.app.server import Service
from serving.backend.fake import AffineBackend
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.pb.twinserve.v1 import training_pb2 as tpb
from serving.pb.twinserve.v1 import training_pb2_grpc as tpb_grpc
from serving.rpc.security import ADMIN_METHODS, PLAINTEXT_TOKENS

from .certs import Pki, make_pki
from .oip import SEED_MODEL, price_request, prices, rpc_error
from .training import kinds, predict, train_request

Stub = pb_grpc.GRPCInferenceServiceStub
Training = tpb_grpc.TrainingServiceStub
ADMIN = "admin-token"
INFER = "infer-token"
BOTH = "listed-twice"
TIMEOUT = 10.0
PRICE = 360.0
DENIED = "needs a token with the 'admin' scope; this token has the 'infer' scope"


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def scoped_service(aio: Any, seeded_repository: Callable[[], Path]) -> Iterator[Service]:
    """A plaintext service with an admin token (old setting) and an infer token."""
    with aio.service(
        seeded_repository(),
        AffineBackend(),
        auth_tokens=[ADMIN, BOTH],
        infer_auth_tokens=[INFER, BOTH],
    ) as started:
        yield started


@pytest.fixture(scope="module")
def scoped_gateway(aio: Any, seeded_repository: Callable[[], Path]) -> Iterator[Gateway]:
    """A gateway with scoped tokens in front of a service that checks no token at all: any
    refusal comes from the gateway's own front."""
    with (
        aio.service(seeded_repository(), AffineBackend(framework="tensorflow")) as open_service,
        aio.gateway(
            tensorflow_url=f"127.0.0.1:{open_service.port}",
            auth_tokens=[ADMIN, BOTH],
            infer_auth_tokens=[INFER, BOTH],
        ) as front,
    ):
        yield front


@pytest.fixture(scope="module", params=["service", "gateway"])
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    server = request.getfixturevalue(f"scoped_{request.param}")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def _admin_calls(channel: grpc.Channel) -> dict[str, Callable[..., Any]]:
    """One call of each admin method, taking **kwargs (metadata)."""
    stub, training = Stub(channel), Training(channel)
    return {
        "Train": lambda **kw: list(
            training.Train(train_request("scoped_line"), timeout=TIMEOUT, **kw)
        ),
        "CancelJob": lambda **kw: training.CancelJob(
            tpb.JobRequest(job_id="tensorflow-999"), timeout=TIMEOUT, **kw
        ),
        "RepositoryModelUnload": lambda **kw: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=SEED_MODEL), timeout=TIMEOUT, **kw
        ),
        "RepositoryModelLoad": lambda **kw: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=SEED_MODEL), timeout=TIMEOUT, **kw
        ),
    }


def test_the_admin_methods() -> None:
    names = {method.rpartition("/")[2] for method in ADMIN_METHODS}
    assert names == {"Train", "CancelJob", "RepositoryModelLoad", "RepositoryModelUnload"}


@pytest.mark.parametrize(
    "method", ["Train", "CancelJob", "RepositoryModelUnload", "RepositoryModelLoad"]
)
def test_an_infer_token_is_denied_the_admin_methods(channel: grpc.Channel, method: str) -> None:
    jobs_before = _jobs(channel)
    code, details = rpc_error(_admin_calls(channel)[method], metadata=_bearer(INFER))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == f"{method} {DENIED}"
    # Nothing happened: the model is still served, and no job was started.
    answer = Stub(channel).ModelInfer(
        price_request(1800.0), timeout=TIMEOUT, metadata=_bearer(INFER)
    )
    assert prices(answer) == pytest.approx([PRICE], abs=1e-3)
    assert _jobs(channel) == jobs_before


def _jobs(channel: grpc.Channel) -> set[str]:
    listed = Training(channel).ListJobs(
        tpb.ListJobsRequest(), timeout=TIMEOUT, metadata=_bearer(INFER)
    )
    return {job.job_id for job in listed.jobs}


@pytest.mark.parametrize("metadata", [(), _bearer("wrong")])
def test_no_or_an_unknown_token_stays_unauthenticated_on_admin_methods(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    for call in _admin_calls(channel).values():
        code, _ = rpc_error(call, metadata=metadata)
        assert code is grpc.StatusCode.UNAUTHENTICATED


def test_an_infer_token_reads_and_infers(channel: grpc.Channel) -> None:
    stub, training, metadata = Stub(channel), Training(channel), _bearer(INFER)
    answer = stub.ModelInfer(price_request(1800.0), timeout=TIMEOUT, metadata=metadata)
    assert prices(answer) == pytest.approx([PRICE], abs=1e-3)
    streamed = list(
        stub.ModelStreamInfer(iter([price_request(1800.0)]), timeout=TIMEOUT, metadata=metadata)
    )
    assert prices(streamed[0].infer_response) == pytest.approx([PRICE], abs=1e-3)
    request = pb.ModelMetadataRequest(name=SEED_MODEL)
    assert stub.ModelMetadata(request, timeout=TIMEOUT, metadata=metadata).name == SEED_MODEL
    statistics = stub.ModelStatistics(
        pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=TIMEOUT, metadata=metadata
    )
    assert statistics.model_stats
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT, metadata=metadata)
    assert SEED_MODEL in {model.name for model in index.models}
    training.ListJobs(tpb.ListJobsRequest(), timeout=TIMEOUT, metadata=metadata)
    # Job status reads pass the scope check (and find no such job).
    code, _ = rpc_error(training.GetJob, tpb.JobRequest(job_id="tensorflow-999"), metadata=metadata)
    assert code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("token", [ADMIN, BOTH])
def test_an_admin_token_may_do_everything(channel: grpc.Channel, token: str) -> None:
    """The old single-list setting (and a token listed in both) keeps every right."""
    stub, training, metadata = Stub(channel), Training(channel), _bearer(token)
    answer = stub.ModelInfer(price_request(1800.0), timeout=TIMEOUT, metadata=metadata)
    assert prices(answer) == pytest.approx([PRICE], abs=1e-3)
    stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(model_name=SEED_MODEL), timeout=TIMEOUT, metadata=metadata
    )
    ready = stub.ModelReady(
        pb.ModelReadyRequest(name=SEED_MODEL), timeout=TIMEOUT, metadata=metadata
    )
    assert not ready.ready
    stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name=SEED_MODEL), timeout=TIMEOUT, metadata=metadata
    )
    answer = stub.ModelInfer(price_request(1800.0), timeout=TIMEOUT, metadata=metadata)
    assert prices(answer) == pytest.approx([PRICE], abs=1e-3)
    events = list(training.Train(train_request("scoped_line"), timeout=TIMEOUT, metadata=metadata))
    assert kinds(events)[-1] == "finished", events[-1]
    job_id = events[0].job_id
    # Cancelling a finished job gets past the scope check to the job's own answer.
    cancel = training.CancelJob(tpb.JobRequest(job_id=job_id), timeout=TIMEOUT, metadata=metadata)
    assert cancel.job_id == job_id
    _, answered = predict(stub, "scoped_line", [[2.0]], metadata=metadata)
    assert answered == pytest.approx([7.0], abs=0.5)


# ---- the warning when tokens would travel in clear ----


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "serving.rpc.security" and record.levelno == logging.WARNING
    ]


def test_tokens_over_plaintext_warn_once_at_start(
    aio: Any,
    seeded_repository: Callable[[], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.rpc.security"):
        with aio.service(
            seeded_repository(), AffineBackend(), infer_auth_tokens=[INFER]
        ) as service:
            assert _warnings(caplog) == [PLAINTEXT_TOKENS]
            caplog.clear()
            with aio.gateway(tensorflow_url=f"127.0.0.1:{service.port}", auth_tokens=[ADMIN]):
                assert _warnings(caplog) == [PLAINTEXT_TOKENS]
                caplog.clear()
        # Without tokens, plaintext is no secret's problem: no warning.
        with aio.service(seeded_repository(), AffineBackend()):
            assert _warnings(caplog) == []


def test_tokens_over_tls_do_not_warn(
    aio: Any,
    seeded_repository: Callable[[], Path],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with caplog.at_level(logging.WARNING, logger="serving.rpc.security"):
        with aio.service(seeded_repository(), AffineBackend(), auth_tokens=[ADMIN], **tls):
            assert _warnings(caplog) == []
        with aio.gateway(tensorflow_url="127.0.0.1:1", auth_tokens=[ADMIN], **tls):
            assert _warnings(caplog) == []


def test_infer_tokens_from_a_file(aio: Any, scoped_gateway: Gateway, tmp_path: Path) -> None:
    tokens = tmp_path / "infer-tokens"
    tokens.write_text("# dashboards\nfrom-file\n")
    upstream = scoped_gateway.upstreams[0].url
    with (
        aio.gateway(tensorflow_url=upstream, infer_auth_tokens_file=tokens) as front,
        grpc.insecure_channel(f"127.0.0.1:{front.port}") as opened,
    ):
        answer = Stub(opened).ModelInfer(
            price_request(1800.0), timeout=TIMEOUT, metadata=_bearer("from-file")
        )
        assert prices(answer) == pytest.approx([PRICE], abs=1e-3)
        code, details = rpc_error(_admin_calls(opened)["Train"], metadata=_bearer("from-file"))
        assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, f"Train {DENIED}")
