"""The matrix on models it does not know, against stub services (in this process) standing in
for a TensorFlow and a PyTorch service and a gateway in front: the two frameworks' versions of
a model compared with the first's native answer, a mismatch measured and said, a model one
framework does not serve, and nothing trained (the stubs have no training service: a call to
ModelReady or Train would fail the run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from loadtest.cli import _parser, _Run, main
from loadtest.matrix import Outcome
from loadtest.summary import winners
from serving.pb import inference_pb2 as pb
from serving.pb import inference_pb2_grpc as pb_grpc
from serving.protocol.codec import decode_inputs
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM, RUNTIME_PARAM


@dataclass(frozen=True)
class Version:
    """One framework's version of a model: y = x * scale + n, x of `width` features."""

    scale: float = 2.0
    width: int = 3


MODELS = {
    "tensorflow": {"same": Version(), "other": Version(), "wider": Version(), "tf_only": Version()},
    "pytorch": {
        "same": Version(),
        "other": Version(scale=3.0),  # another model under the same name
        "wider": Version(width=4),
        "torch_only": Version(),
    },
}


class Stub(pb_grpc.GRPCInferenceServiceServicer):
    """A framework's service; with `framework` None a gateway, which serves the framework a
    call names (the header for metadata, the parameter for inference) and has no ModelConfig."""

    def __init__(self, framework: str | None) -> None:
        self.framework = framework

    def _version(self, name: str, context: grpc.ServicerContext, framework: str) -> Version:
        version = MODELS[framework].get(name)
        if version is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")
        return version

    def _header(self, context: grpc.ServicerContext) -> str:
        return self.framework or dict(context.invocation_metadata())[FRAMEWORK_HEADER]

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = self._version(request.name, context, self._header(context))
        response = pb.ModelMetadataResponse(name=request.name, platform="stub")
        response.inputs.add(name="x", datatype="FP32", shape=[-1, version.width])
        response.inputs.add(name="n", datatype="INT64", shape=[-1, 1])
        response.outputs.add(name="y", datatype="FP32", shape=[-1, version.width])
        return response

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.framework is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no ModelConfig here")
        self._version(request.name, context, self.framework)
        return pb.ModelConfigResponse(config=pb.ModelConfig(name=request.name, max_batch_size=8))

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        framework = self.framework or request.parameters[FRAMEWORK_PARAM].string_param
        version = self._version(request.model_name, context, framework)
        runtime = request.parameters[RUNTIME_PARAM].string_param or "native"
        if runtime != "native":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no runtime '{runtime}' here")
        arrays = {t.name: t.data for t in decode_inputs(request)}
        y = (arrays["x"] * version.scale + arrays["n"]).astype(np.float32)
        response = pb.ModelInferResponse(model_name=request.model_name)
        response.parameters[FRAMEWORK_PARAM].string_param = framework
        response.parameters[RUNTIME_PARAM].string_param = runtime
        response.outputs.add(name="y", datatype="FP32", shape=y.shape)
        response.raw_output_contents.append(y.tobytes())
        return response


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, str]]:
    """Addresses by framework, and the gateway's under "gateway"."""
    servers, addresses = [], {}
    for name, framework in (
        ("tensorflow", "tensorflow"),
        ("pytorch", "pytorch"),
        ("gateway", None),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Stub(framework), server)
        addresses[name] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    yield addresses
    for server in servers:
        server.stop(0)


@pytest.fixture(scope="module")
def outcomes(stubs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    out = tmp_path_factory.mktemp("served-matrix")
    args = ["--gateway", stubs["gateway"], "--frameworks", "tensorflow,pytorch"]
    args += [f"--service=tensorflow={stubs['tensorflow']}", f"--service=pytorch={stubs['pytorch']}"]
    args += ["--models", "same,other,wider,tf_only,torch_only", "--batches", "1"]
    args += ["--concurrency", "1", "--duration", "0.1", "--warmup", "0", "--clients", "1"]
    # The matrix alone: the report (and its plots, per model) is tested elsewhere.
    run = _Run(_parser().parse_args([*args, "--out", str(out)]))
    run.execute()
    return run.outcomes


@pytest.fixture(scope="module")
def cells(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [outcome.to_dict() for outcome in outcomes]


def _native(cells: list[dict[str, Any]], model: str, framework: str) -> list[dict[str, Any]]:
    found = [
        c
        for c in cells
        if (c["model"], c["framework"], c["runtime"]) == (model, framework, "native")
    ]
    assert {c["path"] for c in found} == {"direct", "gateway"}
    return found


def test_the_same_model_on_both_frameworks_is_ok_on_both_paths(cells: list[dict[str, Any]]) -> None:
    for framework in ("tensorflow", "pytorch"):
        for cell in _native(cells, "same", framework):
            assert cell["status"] == "ok", cell
            assert cell["result"]["ok"] > 0 and not cell["result"]["wrong_answers"]
    # A runtime the service does not have: its cells say why, the rest ran.
    tflite = [c for c in cells if c["model"] == "same" and c["runtime"] == "tflite"]
    assert {c["status"] for c in tflite} == {"not available"}
    assert tflite[0]["reason"] == "INVALID_ARGUMENT: no runtime 'tflite' here"


def test_another_model_under_the_same_name_is_measured_as_a_mismatch(
    cells: list[dict[str, Any]], outcomes: list[Outcome]
) -> None:
    for cell in _native(cells, "other", "tensorflow"):  # the reference
        assert cell["status"] == "ok", cell
    for cell in _native(cells, "other", "pytorch"):
        assert cell["status"] == "mismatch", cell
        assert cell["reason"].startswith(
            "answers differ from the reference tensorflow/native direct: y off by"
        )
        # Measured, each answer checked against its own first one.
        assert cell["result"]["ok"] > 0 and not cell["result"]["wrong_answers"]
    # Another model does not compete with the reference for the fastest.
    (direct,) = [w for w in winners(outcomes) if (w["model"], w["path"]) == ("other", "direct")]
    assert (direct["candidates"], direct["fastest"]) == (1, "tensorflow/native direct")


def test_other_inputs_are_a_mismatch_saying_both(cells: list[dict[str, Any]]) -> None:
    for cell in _native(cells, "wider", "pytorch"):
        assert cell["status"] == "mismatch", cell
        assert cell["reason"] == (
            "its inputs FP32 [1, 4], INT64 [1, 1] are not those of the reference "
            "tensorflow/native direct (FP32 [1, 3], INT64 [1, 1]): the answers cannot compare"
        )


def test_a_model_one_framework_lacks_is_not_available_there(cells: list[dict[str, Any]]) -> None:
    missing = [c for c in cells if c["model"] == "tf_only" and c["framework"] == "pytorch"]
    assert len(missing) == 6 and {c["status"] for c in missing} == {"not available"}
    assert {c["reason"] for c in missing} == {"NOT_FOUND: unknown model 'tf_only'"}
    assert all(c["status"] == "ok" for c in _native(cells, "tf_only", "tensorflow"))
    # Where the first framework lacks it, the next one's native answer is the reference.
    assert all(c["status"] == "ok" for c in _native(cells, "torch_only", "pytorch"))
    assert {c["reason"] for c in _native(cells, "torch_only", "tensorflow")} == {
        "NOT_FOUND: unknown model 'torch_only'"
    }


def test_a_batch_over_max_batch_size_is_not_available(
    stubs: dict[str, str], tmp_path: Path
) -> None:
    args = ["--service", f"pytorch={stubs['pytorch']}", "--frameworks", "pytorch"]
    args += ["--models", "same", "--batches", "8,9", "--concurrency", "1", "--duration", "0.1"]
    main([*args, "--warmup", "0", "--clients", "1", "--out", str(tmp_path)])
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    direct = {c["batch"]: c for c in cells if (c["runtime"], c["path"]) == ("native", "direct")}
    assert direct[8]["status"] == "ok"
    assert direct[9]["status"] == "not available"
    assert direct[9]["reason"] == "batch 9 is over the model's max_batch_size 8"
