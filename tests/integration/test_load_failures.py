"""A version that fails to load, as clients see it over gRPC: a short reason in model metadata,
readiness, the repository index, inference and RepositoryModelLoad; the exception itself, with
its traceback, only in the service's log."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.backend import Model, TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.trainer import train_version

from .conftest import AioThread
from .oip import price_request, rpc_error

MODEL = "price"
Code = grpc.StatusCode
Stub = pb_grpc.GRPCInferenceServiceStub
SECRET = "/srv/private/price/1/affine.json"  # a server path no client may see


def _write_version(root: Path) -> Path:
    x = np.linspace(500, 3500, 40, dtype=np.float32).reshape(-1, 1)
    spec = TrainSpec("linear", x, 0.2 * x, x[:0], x[:0], "size_sqft", "price_k")
    version, _ = train_version(ModelRepository(root), AffineBackend(), MODEL, spec, "line")
    return root / MODEL / str(version)


def _mismatched_weights(version_dir: Path) -> None:
    """Weights for three features where the signature has one: the file reads, the first
    call fails inside NumPy (not with one of our errors)."""
    path = version_dir / "affine.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "weights": [0.1, 0.2, 0.3]}))


class _UnreadableBackend(AffineBackend):
    """Files the operating system refuses to read (what `chmod 000` does to a non-root
    service; the tests may run as root)."""

    def load(self, version_dir: Path, architecture: str, runtime: str = "native") -> Model:
        raise PermissionError(13, "Permission denied", SECRET)


def _client_views(stub: Stub) -> list[str]:
    """Every message a client can get about the model, each checked for its status."""
    assert not stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    metadata_code, metadata = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL))
    infer_code, infer = rpc_error(stub.ModelInfer, price_request(1800.0, model=MODEL))
    load_code, load = rpc_error(
        stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=MODEL)
    )
    assert (metadata_code, infer_code, load_code) == (
        Code.UNAVAILABLE,
        Code.UNAVAILABLE,
        Code.FAILED_PRECONDITION,
    )
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    ((state, reason),) = [(r.state, r.reason) for r in rows if (r.name, r.version) == (MODEL, "1")]
    assert state == "UNAVAILABLE"
    return [metadata, infer, load, reason]


@pytest.fixture
def serve(aio: AioThread, tmp_path: Path) -> Iterator[Callable[[AffineBackend], Stub]]:
    """Starts a service on `tmp_path` with the given backend (once the test has broken the
    version: it loads at start), stopped when the test ends."""
    with ExitStack() as stack:

        def start(backend: AffineBackend) -> Stub:
            service = stack.enter_context(aio.service(tmp_path, backend, repository_poll_s=0))
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{service.port}"))
            return Stub(channel)

        yield start


@dataclass(frozen=True)
class Broken:
    backend: AffineBackend
    break_it: Callable[[Path], object]
    short: str  # the reason clients read
    hidden: tuple[str, ...]  # what the exception says, which they must not


def _unlink_weights(version_dir: Path) -> None:
    (version_dir / "affine.json").unlink()


BROKEN = [
    pytest.param(
        Broken(
            AffineBackend(),
            _mismatched_weights,
            "the model failed its warm-up call",
            ("matmul", "mismatch", "ValueError"),
        ),
        id="warm-up-crash",
    ),
    pytest.param(
        Broken(
            _UnreadableBackend(),
            lambda version_dir: None,
            "the model files could not be read",
            (SECRET, "Permission denied", "PermissionError"),
        ),
        id="unreadable-files",
    ),
    pytest.param(
        # Our own error: its message is written for the client.
        Broken(
            AffineBackend(),
            _unlink_weights,
            "cannot load the version: it has no affine.json",
            ("No such file", "Errno"),
        ),
        id="our-own-error",
    ),
]


@pytest.mark.parametrize("broken", BROKEN)
def test_clients_see_a_short_reason_and_the_log_has_the_exception(
    serve: Callable[[AffineBackend], Stub],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    broken: Broken,
) -> None:
    broken.break_it(_write_version(tmp_path))
    with caplog.at_level(logging.ERROR, logger="serving.engine.manager"):
        views = _client_views(serve(broken.backend))
    for view in views:
        assert f"failed to load: {broken.short}" in view, view
        for fragment in broken.hidden:
            assert fragment not in view, view
    assert views[-1] == f"failed to load: {broken.short}"  # the index row: the reason alone
    logged = [r for r in caplog.records if r.getMessage() == f"{MODEL} version 1 failed to load"]
    assert logged  # with its traceback:
    assert all(r.exc_info is not None for r in logged)
