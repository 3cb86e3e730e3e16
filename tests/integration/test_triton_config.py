"""Triton's config.pbtxt through gRPC: batching, max_batch_size, the version policy and the
user's parameters honoured as the ModelConfig RPC reports them; a refused file keeps its model
out with the file, line and field named, while the other models serve."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from serving.backend.fake import AffineBackend
from serving.engine.model_config import CONFIG_FILE
from serving.engine.repository import ModelRepository, RuntimeRecord, VersionMeta
from serving.engine.triton_config import CONFIG_PBTXT
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.types import Signature, TensorSpec
from tests.integration.conftest import AioThread
from tests.integration.oip import SEED_MODEL, price_request, prices, rpc_error, train_slope

Stub = pb_grpc.GRPCInferenceServiceStub
Code = grpc.StatusCode
BROKEN = "broken"
BATCHED = """
name: "house_price"
platform: "numpy_affine"
max_batch_size: 8
input [ { name: "size_sqft" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "price_k" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching {
  preferred_batch_size: [ 8 ]
  max_queue_delay_microseconds: 50000
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "owner" value: { string_value: "pricing" } }
"""


@contextmanager
def _serve(aio: AioThread, root: Path) -> Iterator[Stub]:
    with (
        aio.service(root, AffineBackend(), repository_poll_s=0) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel,
    ):
        yield Stub(channel)


def _config(stub: Stub, model: str = SEED_MODEL) -> pb.ModelConfig:
    return stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=5).config


def test_batching_from_config_pbtxt_is_honoured(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    root = seeded_repository()
    (root / SEED_MODEL / CONFIG_PBTXT).write_text(BATCHED)
    sizes = [float(500 + 37 * i) for i in range(24)]
    with _serve(aio, root) as stub:
        config = _config(stub)
        futures = [stub.ModelInfer.future(price_request(s), timeout=20) for s in sizes]
        answers = [prices(future.result()) for future in futures]
        # Eight rows a request: batches of their own, the rows answered in order.
        alone = [
            prices(stub.ModelInfer(price_request(*sizes[i : i + 8]), timeout=5)) for i in (0, 8, 16)
        ]
        too_many = rpc_error(stub.ModelInfer, price_request(*sizes[:9]), timeout=5)
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=SEED_MODEL), timeout=5)
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 50_000
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("size_sqft", [1])]
    assert config.parameters["owner"].string_value == "pricing"
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (pb.ModelInstanceGroup.KIND_CPU, 1)
    ]
    assert [a for (a,) in answers] == [p for chunk in alone for p in chunk]
    assert too_many[0] is Code.INVALID_ARGUMENT and "max_batch_size" in too_many[1]
    (stats,) = response.model_stats
    batch_sizes = {b.batch_size for b in stats.batch_stats}
    assert stats.execution_count < len(sizes) and max(batch_sizes) <= 8 < len(sizes)


def test_the_version_policy_of_config_pbtxt_is_honoured(aio: AioThread, tmp_path: Path) -> None:
    for slope in (0.1, 0.2, 0.3):
        train_slope(tmp_path, SEED_MODEL, slope)
    (tmp_path / SEED_MODEL / CONFIG_PBTXT).write_text(
        "version_policy { specific { versions: [ 1, 3 ] } }"
    )
    with _serve(aio, tmp_path) as stub:
        ready = [
            stub.ModelReady(pb.ModelReadyRequest(name=SEED_MODEL, version=str(v))).ready
            for v in (1, 2, 3)
        ]
        config = _config(stub)
        first = prices(stub.ModelInfer(price_request(1000, version="1"), timeout=5))
    assert ready == [True, False, True]
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert first == [pytest.approx(100.0)]


REFUSED = [
    ('name: "broken"\noptimization { }', 'broken/config.pbtxt:2:1: Message type "inference.M'),
    (
        "max_batch_size: 4\ninput [ { name: 'size_sqft' data_type: TYPE_FP32 dims: [ 2 ] } ]",
        "broken/config.pbtxt: input 'size_sqft' dims [2], but version 1 has shape [-1, 1]",
    ),
    ('platform: "tensorrt_plan"', "model 'broken' is platform 'tensorrt_plan', which twinserve"),
    ('backend: "python"', "broken/config.pbtxt: backend 'python' is not one twinserve serves"),
    ("instance_group [ { kind: KIND_GPU } ]", "broken/config.pbtxt: instance_group[0].kind KI"),
    ('name: "house_price"', "broken/config.pbtxt: name 'house_price' is not the model's dire"),
]


@pytest.mark.parametrize(("text", "fragment"), REFUSED, ids=lambda v: v[:24])
def test_a_refused_config_pbtxt_keeps_its_model_out_and_says_where(
    aio: AioThread, seeded_repository: Callable[[], Path], text: str, fragment: str
) -> None:
    root = seeded_repository()
    shutil.copytree(root / SEED_MODEL, root / BROKEN)
    (root / BROKEN / CONFIG_PBTXT).write_text(text)
    with _serve(aio, root) as stub:
        metadata = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=BROKEN))
        load = rpc_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=BROKEN))
        rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        served = prices(stub.ModelInfer(price_request(1800), timeout=5))
    assert metadata[0] is Code.UNAVAILABLE and fragment in metadata[1]
    assert fragment in load[1]
    assert any(fragment in r.reason and r.state == "UNAVAILABLE" for r in rows if r.name == BROKEN)
    assert served == [pytest.approx(360.0)]


def test_a_model_another_service_serves_is_skipped_and_left_out_of_the_index(
    aio: AioThread, seeded_repository: Callable[[], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = seeded_repository()
    shutil.copytree(root / SEED_MODEL, root / BROKEN)
    (root / BROKEN / CONFIG_PBTXT).write_text('platform: "tensorflow_savedmodel"')
    with caplog.at_level("INFO", "serving.engine.manager"), _serve(aio, root) as stub:
        metadata = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=BROKEN))
        load = rpc_error(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=BROKEN))
        rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
        served = prices(stub.ModelInfer(price_request(1800), timeout=5))
    why = "model 'broken' is a tensorflow_savedmodel model; this fake service serves"
    assert metadata[0] is Code.NOT_FOUND and why in metadata[1]
    assert load[0] is Code.FAILED_PRECONDITION and why in load[1]
    assert [r.name for r in rows] == [SEED_MODEL]
    assert served == [pytest.approx(360.0)]
    assert caplog.text.count(f"skipping {why}") == 1  # once, though loaded twice


def test_both_layouts_keep_the_model_out(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    root = seeded_repository()
    (root / SEED_MODEL / CONFIG_FILE).write_text("{}")
    (root / SEED_MODEL / CONFIG_PBTXT).write_text("max_batch_size: 4")
    with _serve(aio, root) as stub:
        code, details = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name=SEED_MODEL))
    assert code is Code.UNAVAILABLE
    assert "has both config.json and config.pbtxt" in details


def test_declared_tensors_made_wrong_under_a_serving_model_are_refused_on_reload(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    root = seeded_repository()
    path = root / SEED_MODEL / CONFIG_PBTXT
    path.write_text("output [ { name: 'price_k' data_type: TYPE_FP32 dims: [ -1, 1 ] } ]")
    with _serve(aio, root) as stub:
        path.write_text("output [ { name: 'price_k' data_type: TYPE_FP64 dims: [ -1, 1 ] } ]")
        code, details = rpc_error(
            stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=SEED_MODEL)
        )
        still = prices(stub.ModelInfer(price_request(1800), timeout=5))
    assert code is Code.FAILED_PRECONDITION
    assert "output 'price_k' data_type FP64, but version 1 takes FP32" in details
    assert still == [pytest.approx(360.0)]


def test_a_model_another_framework_trained_into_a_shared_repository_is_skipped(
    aio: AioThread, seeded_repository: Callable[[], Path]
) -> None:
    root = seeded_repository()
    version = root / "theirs" / "1"
    version.mkdir(parents=True)
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 1)),), outputs=(TensorSpec("y", "FP32", (-1, 1)),)
    )
    platform = "tensorflow_savedmodel"
    ModelRepository.write_meta(
        version,
        VersionMeta("tensorflow", platform, "linear", signature, runtimes={
            "native": RuntimeRecord(platform), "onnx": RuntimeRecord("onnxruntime_onnx")
        }),
    )  # fmt: skip
    with _serve(aio, root) as stub:
        code, details = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="theirs"))
        rows = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    assert code is Code.NOT_FOUND
    assert "'theirs' was trained by the tensorflow service (tensorflow_savedmodel)" in details
    assert [r.name for r in rows] == [SEED_MODEL]
