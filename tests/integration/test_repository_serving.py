"""The versioned repository served over gRPC with the NumPy backend: runtimes, version
policies, polling, hot swaps under load, restarts, corrupt models and bad names.

Version k of a test model answers price = k * 0.1 * size, so every answer tells which
version made it: at SIZE = 1000 sq ft, version k says 100 k.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving.app.server import Service
from serving.backend import TrainSpec
from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.engine.onnx_model import ONNX_FILE
from serving.engine.repository import META_FILE, ModelRepository
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.training.trainer import train_version
from serving.types import ParamValue

from .conftest import AioThread
from .oip import eventually, price_request, prices, rpc_error

Stub = pb_grpc.GRPCInferenceServiceStub
Code = grpc.StatusCode

MODEL = "price"
SIZE = 1000.0
WAIT = 10.0  # seconds an `eventually` waits; a healthy run needs a fraction of it


# ---- writing versions ----


def _spec(k: int) -> TrainSpec:
    x = np.linspace(500, 3500, 40, dtype=np.float32).reshape(-1, 1)
    y = (k * 0.1 * x).astype(np.float32)
    return TrainSpec(
        architecture="linear",
        x=x,
        y=y,
        x_val=x[::5],
        y_val=y[::5],
        input_name="size_sqft",
        output_name="price_k",
    )


def add_version(
    root: Path, k: int, *, model: str = MODEL, backend: AffineBackend | None = None
) -> Path:
    """Trains the version answering k * 0.1 * size as the next version of `model`, which must
    be version k (a backend of its own, so the serving backend's `closed` counts serving)."""
    version, _ = train_version(
        ModelRepository(root), backend or AffineBackend(), model, _spec(k), f"line(k={k})"
    )
    assert version == k
    return root / model / str(k)


def repository(root: Path, versions: int = 1, model: str = MODEL) -> Path:
    for k in range(1, versions + 1):
        add_version(root, k, model=model)
    return root


def write_config(root: Path, config: Any, model: str = MODEL) -> None:
    text = config if isinstance(config, str) else json.dumps(config)
    (root / model / CONFIG_FILE).write_text(text)


def copy_in(source: Path, target: Path) -> None:
    """As an operator would: copy under a hidden name beside the target, then rename."""
    staging = target.parent / f".incoming-{target.name}"
    shutil.copytree(source, staging)
    os.rename(staging, target)


# ---- asking ----


def price(k: int) -> float:
    return 100.0 * k


def ask(
    stub: Stub,
    version: str = "",
    *,
    model: str = MODEL,
    runtime: ParamValue | None = None,
) -> tuple[str, float, str]:
    """(the version that answered, its price for SIZE, the runtime that ran it)."""
    parameters = {} if runtime is None else {"runtime": runtime}
    response = stub.ModelInfer(
        price_request(SIZE, model=model, version=version, parameters=parameters), timeout=10
    )
    (answer,) = prices(response)
    assert response.parameters["framework"].string_param == "fake"
    return response.model_version, answer, response.parameters["runtime"].string_param


def assert_serves(stub: Stub, version: int, *, model: str = MODEL) -> None:
    served, answer, _ = ask(stub, model=model)
    assert served == str(version)
    assert answer == pytest.approx(price(version), abs=1e-2)


def serves(stub: Stub, version: int, *, model: str = MODEL) -> bool:
    try:
        served, answer, _ = ask(stub, model=model)
    except grpc.RpcError:
        return False
    return served == str(version) and answer == pytest.approx(price(version), abs=1e-2)


def ready(stub: Stub, model: str = MODEL, version: str = "") -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=model, version=version)).ready


def metadata_versions(stub: Stub, model: str = MODEL) -> list[str]:
    return list(stub.ModelMetadata(pb.ModelMetadataRequest(name=model)).versions)


def config(stub: Stub, model: str = MODEL) -> pb.ModelConfig:
    return stub.ModelConfig(pb.ModelConfigRequest(name=model)).config


def index(stub: Stub) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (state, reason)."""
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {(row.name, row.version): (row.state, row.reason) for row in rows}


def load(stub: Stub, model: str = MODEL) -> None:
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model), timeout=10)


@contextmanager
def serving(
    aio: AioThread, root: Path, backend: AffineBackend | None = None, **settings: Any
) -> Iterator[tuple[Service, Stub]]:
    """A service on `root` (no polling unless asked) and a stub for it."""
    settings.setdefault("repository_poll_s", 0)
    with (
        aio.service(root, backend or AffineBackend(), **settings) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield service, Stub(channel)


# ---- runtimes ----


@pytest.fixture(scope="module")
def one_version(aio: AioThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    """A shared service on a repository holding version 1 (read-only tests only)."""
    with serving(aio, repository(tmp_path_factory.mktemp("models"))) as (_, stub):
        yield stub


def test_training_records_checked_runtimes(tmp_path: Path) -> None:
    directory = add_version(tmp_path, 1)
    runtimes = json.loads((directory / META_FILE).read_text())["runtimes"]
    assert runtimes["native"] == {"status": "ok", "platform": "numpy_affine"}
    onnx = runtimes["onnx"]
    assert (onnx["status"], onnx["platform"]) == ("ok", "onnxruntime_onnx")
    assert 0 <= onnx["max_abs_diff"] <= 1e-3
    assert (directory / ONNX_FILE).is_file()


def test_runtime_parameter_picks_the_runtime(one_version: Stub) -> None:
    version, native, runtime = ask(one_version)
    assert (version, runtime) == ("1", "native")
    assert native == pytest.approx(price(1), abs=1e-2)
    version, onnx, runtime = ask(one_version, runtime="onnx")
    assert (version, runtime) == ("1", "onnx")
    assert onnx == pytest.approx(native, abs=1e-3)
    assert ask(one_version, "1", runtime="native")[2] == "native"


@pytest.mark.parametrize(
    ("runtime", "code", "fragments"),
    [
        # The service knows only the runtimes its backend registers (another framework's
        # are as unknown to it as a made-up one).
        ("tflite", Code.INVALID_ARGUMENT, ["unknown runtime 'tflite'", "runtimes: native, onnx"]),
        ("torchscript", Code.INVALID_ARGUMENT, ["unknown runtime 'torchscript'"]),
        ("bogus", Code.INVALID_ARGUMENT, ["unknown runtime 'bogus'", "native, onnx"]),
        (3, Code.INVALID_ARGUMENT, ["'runtime' must be a string"]),
        (True, Code.INVALID_ARGUMENT, ["'runtime' must be a string"]),
    ],
)
def test_runtimes_not_offered_are_refused(
    one_version: Stub, runtime: ParamValue, code: Code, fragments: list[str]
) -> None:
    got, details = rpc_error(ask, one_version, runtime=runtime)
    assert got is code, details
    for fragment in fragments:
        assert fragment in details
    assert_serves(one_version, 1)


def test_model_config_names_the_runtimes(one_version: Stub) -> None:
    answer = config(one_version)
    assert (answer.runtime, answer.platform) == ("native", "numpy_affine")
    assert answer.parameters["runtimes"].string_value == "native,onnx"
    answer_v1 = one_version.ModelConfig(pb.ModelConfigRequest(name=MODEL, version="1")).config
    assert answer_v1.parameters["runtimes"].string_value == "native,onnx"


def test_a_refused_export_is_recorded_and_not_served(aio: AioThread, tmp_path: Path) -> None:
    directory = add_version(tmp_path, 1, backend=AffineBackend(export_skew=50.0))
    onnx = json.loads((directory / META_FILE).read_text())["runtimes"]["onnx"]
    assert onnx["status"] == "refused"
    assert onnx["max_abs_diff"] == pytest.approx(50.0, abs=1e-2)
    assert "differs from the native model by 50" in onnx["reason"]
    assert sorted(p.name for p in directory.iterdir()) == ["affine.json", META_FILE]
    with serving(aio, tmp_path) as (_, stub):
        code, details = rpc_error(ask, stub, runtime="onnx")
        assert code is Code.FAILED_PRECONDITION
        assert "its export was refused: differs from the native model by 50" in details
        assert "available: native" in details
        assert_serves(stub, 1)
        assert config(stub).parameters["runtimes"].string_value == "native"


def test_configured_default_runtime(aio: AioThread, tmp_path: Path) -> None:
    repository(tmp_path)
    write_config(tmp_path, {"runtime": "onnx"})
    with serving(aio, tmp_path) as (_, stub):
        version, answer, runtime = ask(stub)
        assert (version, runtime) == ("1", "onnx")
        assert answer == pytest.approx(price(1), abs=1e-2)
        assert ask(stub, runtime="native")[2] == "native"
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        assert meta.platform == "onnxruntime_onnx"
        assert (config(stub).runtime, config(stub).platform) == ("onnx", "onnxruntime_onnx")


def test_configured_runtime_that_is_unknown(aio: AioThread, tmp_path: Path) -> None:
    repository(tmp_path)
    repository(tmp_path, model="other")
    write_config(tmp_path, {"runtime": "bogus"})
    with serving(aio, tmp_path) as (_, stub):
        assert not ready(stub)
        code, details = rpc_error(ask, stub)
        assert code is Code.UNAVAILABLE
        assert "unknown runtime 'bogus'" in details
        state, reason = index(stub)[(MODEL, "")]
        assert state == "UNAVAILABLE"
        assert "unknown runtime 'bogus'" in reason
        code, details = rpc_error(load, stub)
        assert code is Code.FAILED_PRECONDITION
        assert "unknown runtime 'bogus'" in details
        assert_serves(stub, 1, model="other")
        write_config(tmp_path, {"runtime": "onnx"})
        load(stub)
        assert ask(stub)[2] == "onnx"


# ---- version policies ----


POLICIES = [
    pytest.param({"latest": {"num_versions": 2}}, [2, 3], id="latest-2"),
    pytest.param({"all": {}}, [1, 2, 3], id="all"),
    pytest.param({"specific": {"versions": [1, 3]}}, [1, 3], id="specific-1-3"),
    pytest.param({"specific": {"versions": [1, 9]}}, [1], id="specific-missing-one"),
]


@pytest.mark.parametrize(("policy", "served"), POLICIES)
def test_version_policy(
    aio: AioThread, tmp_path: Path, policy: dict[str, Any], served: list[int]
) -> None:
    repository(tmp_path, versions=3)
    write_config(tmp_path, {"version_policy": policy})
    with serving(aio, tmp_path) as (_, stub):
        assert metadata_versions(stub) == [str(v) for v in served]
        assert config(stub).version_policy.WhichOneof("policy_choice") == next(iter(policy))
        assert_serves(stub, max(served))
        for k in (1, 2, 3, 4):
            assert ready(stub, version=str(k)) is (k in served)
            if k in served:
                version, answer, _ = ask(stub, str(k))
                assert version == str(k)
                assert answer == pytest.approx(price(k), abs=1e-2)
            else:
                code, details = rpc_error(ask, stub, str(k))
                assert code is Code.NOT_FOUND
                assert f"no loaded version {k}" in details
                assert "serving: " + ", ".join(str(v) for v in served) in details


def test_load_applies_a_changed_policy(aio: AioThread, tmp_path: Path) -> None:
    repository(tmp_path, versions=3)
    backend = AffineBackend()
    with serving(aio, tmp_path, backend) as (_, stub):
        assert metadata_versions(stub) == ["3"]
        assert config(stub).version_policy.latest.num_versions == 1

        write_config(tmp_path, {"version_policy": {"specific": {"versions": [1, 3]}}})
        # Not applied until loaded: the configuration reported is the one serving.
        assert config(stub).version_policy.latest.num_versions == 1
        load(stub)
        assert metadata_versions(stub) == ["1", "3"]
        assert list(config(stub).version_policy.specific.versions) == [1, 3]
        assert backend.closed == 0  # version 3 was kept, not reloaded

        write_config(tmp_path, {"version_policy": {"all": {}}})
        load(stub)
        assert metadata_versions(stub) == ["1", "2", "3"]
        assert config(stub).version_policy.HasField("all")
        assert [ask(stub, str(k))[1] for k in (1, 2, 3)] == pytest.approx(
            [price(1), price(2), price(3)], abs=1e-2
        )

        write_config(tmp_path, {"version_policy": {"latest": {"num_versions": 2}}})
        load(stub)
        assert metadata_versions(stub) == ["2", "3"]
        assert config(stub).version_policy.latest.num_versions == 2
        assert eventually(lambda: backend.closed == 1, WAIT)  # version 1 released


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not a valid model configuration"),
        ('{"version_policy": {"newest": {}}}', "unknown version policy 'newest'"),
        ('{"version_policy": {"latest": {"num_versions": 0}}}', "at least 1"),
        ('{"version_policy": {"specific": {"versions": []}}}', "positive version numbers"),
    ],
)
def test_invalid_configuration(aio: AioThread, tmp_path: Path, text: str, fragment: str) -> None:
    repository(tmp_path, versions=2)
    repository(tmp_path, model="other")
    write_config(tmp_path, text)
    with serving(aio, tmp_path) as (_, stub):
        assert not ready(stub)
        code, details = rpc_error(ask, stub)
        assert code is Code.UNAVAILABLE
        assert fragment in details and CONFIG_FILE in details
        state, reason = index(stub)[(MODEL, "")]
        assert state == "UNAVAILABLE" and fragment in reason
        assert_serves(stub, 1, model="other")

        # Broken while serving: the load is refused and what served keeps serving.
        write_config(tmp_path, {"version_policy": {"all": {}}})
        load(stub)
        assert metadata_versions(stub) == ["1", "2"]
        write_config(tmp_path, text)
        code, details = rpc_error(load, stub)
        assert code is Code.FAILED_PRECONDITION
        assert fragment in details
        assert metadata_versions(stub) == ["1", "2"]
        assert config(stub).version_policy.HasField("all")
        assert_serves(stub, 2)


# ---- polling ----


def test_polling_follows_the_repository(aio: AioThread, tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    scratch = tmp_path / "scratch"
    add_version(scratch, 1)
    add_version(scratch, 2)
    add_version(scratch, 3)
    with serving(aio, root, repository_poll_s=0.2) as (_, stub):
        assert_serves(stub, 1)

        copy_in(scratch / MODEL / "2", root / MODEL / "2")
        assert eventually(lambda: serves(stub, 2), WAIT)

        copy_in(scratch / MODEL, root / "other")
        assert eventually(lambda: ready(stub, "other"), WAIT)
        assert ask(stub, model="other")[0] == "3"

        # A version directory still being written (no model.json yet) is left alone. A
        # model copied in after it is loaded by a later pass, which also saw the half one.
        half = root / MODEL / "3"
        half.mkdir()
        shutil.copy(scratch / MODEL / "3" / "affine.json", half)
        copy_in(scratch / MODEL, root / "sentinel")
        assert eventually(lambda: ready(stub, "sentinel"), WAIT)
        assert_serves(stub, 2)
        assert (MODEL, "3") not in index(stub)
        shutil.copy(scratch / MODEL / "3" / ONNX_FILE, half)
        shutil.copy(scratch / MODEL / "3" / META_FILE, half)
        assert eventually(lambda: serves(stub, 3), WAIT)

        shutil.rmtree(root / "other")
        assert eventually(lambda: not ready(stub, "other"), WAIT)
        code, details = rpc_error(ask, stub, model="other")
        assert (code, details) == (Code.NOT_FOUND, "unknown model 'other'")
        assert not any(name == "other" for name, _ in index(stub))
        assert_serves(stub, 3)


def test_polling_leaves_unloaded_models_unloaded(aio: AioThread, tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    scratch = tmp_path / "scratch"
    add_version(scratch, 1)
    add_version(scratch, 2)
    with serving(aio, root, repository_poll_s=0.2) as (_, stub):
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL))
        copy_in(scratch / MODEL / "2", root / MODEL / "2")  # a change polling would load
        # Models copied in after the unload and the new version show that passes ran.
        for sentinel in ("sentinel-a", "sentinel-b"):
            copy_in(scratch / MODEL, root / sentinel)
            assert eventually(partial(ready, stub, sentinel), WAIT)
        assert not ready(stub)
        code, details = rpc_error(ask, stub)
        assert code is Code.UNAVAILABLE
        assert "unloaded" in details
        load(stub)
        assert_serves(stub, 2)


def test_polling_does_not_retry_a_model_that_cannot_load(
    aio: AioThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = repository(tmp_path / "models")
    scratch = repository(tmp_path / "scratch", model="sentinel")
    broken = root / "broken"
    broken.mkdir()
    (broken / CONFIG_FILE).write_text("{not json")
    with serving(aio, root, repository_poll_s=0.2) as (_, stub):
        assert "not a valid model configuration" in index(stub)[("broken", "")][1]
        caplog.clear()
        copy_in(scratch / "sentinel", root / "sentinel")
        assert eventually(lambda: ready(stub, "sentinel"), WAIT)
        assert not [r for r in caplog.records if "broken" in r.getMessage()]
        (broken / CONFIG_FILE).unlink()
        copy_in(root / MODEL / "1", broken / "1")
        assert eventually(lambda: serves(stub, 1, model="broken"), WAIT)


# ---- hot swap ----


def test_hot_swap_under_load(aio: AioThread, tmp_path: Path) -> None:
    root = repository(tmp_path)
    backend = AffineBackend()
    answers: list[tuple[str, float]] = []
    failures: list[str] = []
    per_thread: list[list[int]] = [[] for _ in range(16)]
    stop = threading.Event()
    lock = threading.Lock()

    def client(stub: Stub, seen: list[int]) -> None:
        while not stop.is_set():
            try:
                version, answer, _ = ask(stub)
            except grpc.RpcError as exc:
                with lock:
                    failures.append(f"{exc.code()}: {exc.details()}")
                continue
            seen.append(int(version))
            with lock:
                answers.append((version, answer))

    def answered_by(version: int, count: int) -> bool:
        with lock:
            return sum(v == str(version) for v, _ in answers) >= count

    with serving(aio, root, backend, inference_threads=4) as (_, stub):
        threads = [
            threading.Thread(target=client, args=(stub, seen), daemon=True) for seen in per_thread
        ]
        for thread in threads:
            thread.start()
        try:
            assert eventually(lambda: answered_by(1, 200), WAIT)
            for k in (2, 3, 4):
                add_version(root, k)
                load(stub)
                assert_serves(stub, k)  # the swap is done when the load returns
                assert eventually(partial(answered_by, k, 200), WAIT)
        finally:
            stop.set()
            for thread in threads:
                thread.join(WAIT)
        assert failures == []
        assert {v for v, _ in answers} == {"1", "2", "3", "4"}
        mixed = [(v, a) for v, a in answers if a != pytest.approx(price(int(v)), abs=1e-2)]
        assert mixed == []
        for seen in per_thread:  # a client never goes back to an older version
            assert seen == sorted(seen)
        assert eventually(lambda: backend.closed == 3, WAIT)  # versions 1, 2 and 3
        assert metadata_versions(stub) == ["4"]


class HoldFirst(threading.Event):
    """A gate for AffineBackend: after `arm`, the first predict call is held until `set`;
    every other call (other requests, warming up a new version) goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.entered = threading.Event()
        self._armed = False
        self._lock = threading.Lock()

    def arm(self) -> None:
        self.clear()
        self._armed = True

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            hold, self._armed = self._armed, False
        if not hold:
            return True
        self.entered.set()
        return super().wait(timeout)


def test_an_in_flight_request_finishes_on_its_version(aio: AioThread, tmp_path: Path) -> None:
    root = repository(tmp_path)
    gate = HoldFirst()
    backend = AffineBackend(gate=gate)
    # inline_max_us=0: the gate blocks the calling thread, which must not be the event loop.
    with serving(aio, root, backend, inline_max_us=0) as (_, stub):
        gate.arm()
        held = stub.ModelInfer.future(price_request(SIZE, model=MODEL, id="held"), timeout=10)
        try:
            assert gate.entered.wait(5), "the call never reached the model"
            add_version(root, 2)
            load(stub)
            assert_serves(stub, 2)
            assert metadata_versions(stub) == ["2"]
            assert backend.closed == 0  # version 1 is retired but still in use
            assert not held.done()
        finally:
            gate.set()
        response = held.result(timeout=10)
        assert (response.id, response.model_version) == ("held", "1")
        assert prices(response) == pytest.approx([price(1)], abs=1e-2)
        assert eventually(lambda: backend.closed == 1, WAIT)


# ---- restarts ----


def test_a_restart_serves_what_was_served(aio: AioThread, tmp_path: Path) -> None:
    repository(tmp_path, versions=3)
    write_config(tmp_path, {"version_policy": {"latest": {"num_versions": 2}}, "runtime": "onnx"})
    with serving(aio, tmp_path) as (_, stub):
        assert metadata_versions(stub) == ["2", "3"]
        add_version(tmp_path, 4)
        load(stub)
        before = [ask(stub, str(k)) for k in (3, 4)]
        assert metadata_versions(stub) == ["3", "4"]
    with serving(aio, tmp_path) as (_, stub):
        assert metadata_versions(stub) == ["3", "4"]
        assert config(stub).version_policy.latest.num_versions == 2
        assert config(stub).runtime == "onnx"
        assert [ask(stub, str(k)) for k in (3, 4)] == before


# ---- corrupt models ----


def _garbage_affine(version_dir: Path) -> None:
    (version_dir / "affine.json").write_text("garbage{")


def _no_affine(version_dir: Path) -> None:
    (version_dir / "affine.json").unlink()


def _garbage_meta(version_dir: Path) -> None:
    (version_dir / META_FILE).write_text('{"framework": "fake"')


CORRUPTIONS = [
    pytest.param(_garbage_affine, "affine.json is not an affine model", id="garbage-weights"),
    pytest.param(_no_affine, "it has no affine.json", id="missing-weights"),
    pytest.param(_garbage_meta, "model.json of version", id="garbage-metadata"),
]


@pytest.mark.parametrize(("corrupt", "fragment"), CORRUPTIONS)
def test_a_corrupt_new_version_leaves_the_previous_serving(
    aio: AioThread, tmp_path: Path, corrupt: Any, fragment: str
) -> None:
    repository(tmp_path)
    with serving(aio, tmp_path) as (_, stub):
        corrupt(add_version(tmp_path, 2))
        code, details = rpc_error(load, stub)
        assert code is Code.FAILED_PRECONDITION
        assert f"model '{MODEL}' did not load: version 2 failed to load: " in details
        assert fragment in details
        assert_serves(stub, 1)
        rows = index(stub)
        assert rows[(MODEL, "1")] == ("READY", "")
        state, reason = rows[(MODEL, "2")]
        assert state == "UNAVAILABLE" and reason.startswith("failed to load: ")
        assert fragment in reason
        code, details = rpc_error(ask, stub, "2")
        assert code is Code.NOT_FOUND
        assert "failed to load" in details and fragment in details


@pytest.mark.parametrize(("corrupt", "fragment"), CORRUPTIONS)
def test_a_corrupt_model_at_startup(
    aio: AioThread, tmp_path: Path, corrupt: Any, fragment: str
) -> None:
    repository(tmp_path, model="good")
    corrupt(add_version(tmp_path, 1))
    with serving(aio, tmp_path) as (service, stub):
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert_serves(stub, 1, model="good")
        assert not ready(stub)
        code, details = rpc_error(ask, stub)
        assert code is Code.UNAVAILABLE
        assert f"model '{MODEL}' is unavailable: version 1 failed to load: " in details
        assert fragment in details
        state, reason = index(stub)[(MODEL, "1")]
        assert state == "UNAVAILABLE" and fragment in reason
        assert service.manager.ready_names() == ["good"]


def test_a_truncated_onnx_file_leaves_native_serving(aio: AioThread, tmp_path: Path) -> None:
    onnx = add_version(tmp_path, 1) / ONNX_FILE
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    with serving(aio, tmp_path) as (_, stub):
        assert_serves(stub, 1)
        code, details = rpc_error(ask, stub, runtime="onnx")
        assert code is Code.FAILED_PRECONDITION
        assert "no 'onnx' runtime (it failed to load: cannot load ONNX model" in details
        assert "available: native" in details
        assert config(stub).parameters["runtimes"].string_value == "native"


# ---- names ----


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 200])
@pytest.mark.parametrize("rpc", ["RepositoryModelLoad", "RepositoryModelUnload"])
def test_invalid_model_names_are_refused(
    aio: AioThread, tmp_path: Path, rpc: str, name: str
) -> None:
    root = repository(tmp_path / "models")
    repository(tmp_path, model="x")  # what "../x" would reach
    (root / "a").mkdir()
    repository(root / "a", model="b")  # what "a/b" would reach
    with serving(aio, root) as (service, stub):
        request = (
            pb.RepositoryModelLoadRequest(model_name=name)
            if rpc == "RepositoryModelLoad"
            else pb.RepositoryModelUnloadRequest(model_name=name)
        )
        code, details = rpc_error(getattr(stub, rpc), request)
        assert code is Code.INVALID_ARGUMENT
        assert "model name" in details
        assert service.manager.ready_names() == [MODEL]
        assert_serves(stub, 1)


@pytest.mark.parametrize("rpc", ["RepositoryModelLoad", "RepositoryModelUnload"])
def test_unknown_models_are_not_found(one_version: Stub, rpc: str) -> None:
    request = (
        pb.RepositoryModelLoadRequest(model_name="nope")
        if rpc == "RepositoryModelLoad"
        else pb.RepositoryModelUnloadRequest(model_name="nope")
    )
    code, details = rpc_error(getattr(one_version, rpc), request)
    assert code is Code.NOT_FOUND
    assert "nope" in details
    assert ("nope", "") not in index(one_version)


@pytest.mark.parametrize("version", ["../1", "1/..", "-1", "0", "one", "01"])
def test_bad_versions_are_not_found(one_version: Stub, version: str) -> None:
    code, details = rpc_error(ask, one_version, version)
    assert code is Code.NOT_FOUND
    assert f"model '{MODEL}' has no" in details
    assert_serves(one_version, 1)
