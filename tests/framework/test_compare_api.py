"""The comparison call through the gateway in front of real TensorFlow and PyTorch services
(separate processes), each serving its own seed `house_price`: both answer the project's bar
and agree with each other."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from devtools.stack import Process, launch
from serving.pb import inference_pb2 as pb
from serving.pb.twinserve.v1 import compare_pb2 as cpb
from serving.pb.twinserve.v1 import compare_pb2_grpc as cpb_grpc

pytestmark = pytest.mark.framework

MODULES = {"tensorflow": "tf_service", "pytorch": "torch_service"}


@pytest.fixture(scope="module")
def comparison(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[cpb_grpc.ComparisonServiceStub]:
    root = tmp_path_factory.mktemp("compare-api")
    env = {"TWINSERVE_LOG_LEVEL": "WARNING"}
    started: list[Process] = []
    try:
        for name, module in MODULES.items():
            repository = str(root / name)
            seed = [sys.executable, "-m", module, "seed", "--model-repository", repository]
            subprocess.run(seed, check=True, timeout=300)
            started.append(launch(name, module, ["--model-repository", repository], env=env))
        started.append(
            launch(
                "gateway",
                "gateway",
                env={
                    "TWINSERVE_GATEWAY_TENSORFLOW_URL": started[0].address,
                    "TWINSERVE_GATEWAY_PYTORCH_URL": started[1].address,
                    "TWINSERVE_GATEWAY_LOG_LEVEL": "WARNING",
                },
            )
        )
        with grpc.insecure_channel(started[-1].address) as channel:
            yield cpb_grpc.ComparisonServiceStub(channel)
    finally:
        for process in reversed(started):
            assert process.stop() == 0, f"{process.name} did not drain cleanly"


def _house_price(*sizes: float) -> bytes:
    request = pb.ModelInferRequest(model_name="house_price", id="compare")
    data = np.asarray(sizes, np.float32).reshape(-1, 1)
    request.inputs.add(name="size_sqft", datatype="FP32", shape=data.shape)
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


def _gaps(answer: cpb.CompareResponse) -> dict[tuple[str, int, int], float]:
    """max |a - b| per output for every pair of results, from the values they answered:
    what the gateway's differences must say (each result's own value is checked against the
    bar apart, so a wrong difference cannot hide behind both being near it)."""
    values = [
        {o.name: np.asarray(o.values, np.float64) for o in result.outputs}
        for result in answer.results
    ]
    return {
        (name, i, j): float(np.abs(values[i][name] - values[j][name]).max())
        for i in range(len(values))
        for j in range(i + 1, len(values))
        for name in values[i]
    }


def test_compare_house_price_at_1800(comparison: cpb_grpc.ComparisonServiceStub) -> None:
    answer = comparison.Compare(cpb.CompareRequest(infer_request=_house_price(1800.0)), timeout=30)
    assert [r.target.framework for r in answer.results] == list(MODULES)
    for result in answer.results:
        assert result.status.name == "OK", result.status.message
        assert result.target.runtime == "native"
        (output,) = result.outputs
        assert list(output.shape) == [1, 1]
        assert output.values[0] == pytest.approx(360.0, abs=1.0), result.target.framework
    (difference,) = answer.differences
    assert (difference.output, difference.first, difference.second) == ("price_k", 0, 1)
    assert difference.max_abs_diff == pytest.approx(_gaps(answer)[("price_k", 0, 1)], abs=1e-9)


def test_compare_every_runtime(comparison: cpb_grpc.ComparisonServiceStub) -> None:
    targets = [
        cpb.Target(framework=framework, runtime=runtime)
        for framework, runtimes in (
            ("tensorflow", ("native", "tflite", "onnx")),
            ("pytorch", ("native", "torchscript", "onnx")),
        )
        for runtime in runtimes
    ]
    # 123457 sq ft lies far outside the training data: there the frameworks' float32 weights
    # part by a few thousandths, so the differences below are not all zero (at 1800 they are).
    sizes = _house_price(1800.0, 900.0, 123457.0)
    answer = comparison.Compare(
        cpb.CompareRequest(infer_request=sizes, targets=targets), timeout=60
    )
    for result in answer.results:
        assert result.status.name == "OK", (result.target, result.status.message)
        values = list(result.outputs[0].values)
        assert values == pytest.approx([360.0, 180.0, 0.2 * 123457.0], abs=1.0)
    # Every pair of six targets, each gap the one their answers above really have.
    reported = {(d.output, d.first, d.second): d.max_abs_diff for d in answer.differences}
    expected = _gaps(answer)
    assert len(expected) == 15
    assert reported == pytest.approx(expected, abs=1e-9)
