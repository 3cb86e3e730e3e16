"""The unmodified tritonclient (and Triton's perf_analyzer, where it runs) against a user's
Triton model repository (tests/framework/user_repository.py: SavedModel, TorchScript and ONNX
models twinserve's training did not write), served by the three services as real processes
on that one directory, each service directly and through the gateway."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from devtools.stack import Process, launch
from tests.framework.user_repository import BAD, GOOD, UserRepository, build

from .test_perf_analyzer import RUN_TIMEOUT_S, SUMMARY, _environment, perf_analyzer

__all__ = ["perf_analyzer"]  # the fixture, shared with the house-price runs

Arrays = dict[str, np.ndarray]
_PACKAGES = {"tensorflow": "tf_service", "pytorch": "torch_service", "onnx": "onnx_service"}


class _Served:
    def __init__(self, repository: UserRepository, addresses: dict[str, str]) -> None:
        self.repository = repository
        self.addresses = addresses  # framework -> address, and "gateway"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Served]:
    repository = build(tmp_path_factory.mktemp("user-models"))
    started: list[Process] = []
    try:
        for framework, package in _PACKAGES.items():
            started.append(launch(framework, package, ["--model-repository", str(repository.root)]))
        addresses = {p.name: p.address for p in started}
        gateway = launch(
            "gateway", "gateway", env={"TWINSERVE_GATEWAY_FRAMEWORKS": json.dumps(addresses)}
        )
        started.append(gateway)
        yield _Served(repository, {**addresses, "gateway": gateway.address})
    finally:
        codes = {process.name: process.stop() for process in reversed(started)}
    assert not {name: code for name, code in codes.items() if code != 0}


def _client(served: _Served, where: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(served.addresses[where])


def _arrays(model: str, rows: int) -> Arrays:
    rng = np.random.default_rng(11)
    if model in ("keras_pair", "torch_pair"):
        return {
            "ids": rng.integers(0, 10, (rows, 4), dtype=np.int64),
            "features": rng.normal(size=(rows, 3)).astype(np.float32),
        }
    if model == "onnx_auto":
        return {
            "x": rng.normal(size=(rows, 3)).astype(np.float32),
            "n": rng.integers(-5, 5, (rows, 1), dtype=np.int64),
        }
    words = [b"tritonclient", "caf\u00e9".encode(), b""]
    return {"text": np.array([words[i % len(words)] for i in range(rows)], dtype=object)}


def _infer(
    client: grpcclient.InferenceServerClient, model: str, arrays: Arrays
) -> dict[str, np.ndarray]:
    metadata = client.get_model_metadata(model, as_json=True)
    inputs = []
    for tensor in metadata["inputs"]:
        array = arrays[tensor["name"]]
        item = grpcclient.InferInput(tensor["name"], list(array.shape), tensor["datatype"])
        item.set_data_from_numpy(array)
        inputs.append(item)
    assert [t["datatype"] for t in metadata["inputs"]] == [
        "BYTES"
        if arrays[t["name"]].dtype == object
        else np_to_triton_dtype(arrays[t["name"]].dtype)
        for t in metadata["inputs"]
    ]
    result = client.infer(model, inputs)
    return {t["name"]: result.as_numpy(t["name"]) for t in metadata["outputs"]}


def _same(answer: dict[str, np.ndarray], expected: Arrays) -> None:
    assert sorted(answer) == sorted(expected)
    for name, want in expected.items():
        if want.dtype.kind == "f":
            np.testing.assert_allclose(answer[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            assert answer[name].tolist() == want.tolist(), name


@pytest.mark.parametrize(
    ("model", "where"),
    [(model, where) for model, serving in GOOD.items() for where in ("gateway", *serving)],
)
def test_tritonclient_gets_what_the_framework_computes(
    served: _Served, model: str, where: str
) -> None:
    client = _client(served, where)
    try:
        arrays = _arrays(model, 2)
        _same(_infer(client, model, arrays), served.repository.compute[model](arrays))
    finally:
        client.close()


def test_tritonclient_reads_the_auto_completed_configuration(served: _Served) -> None:
    client = _client(served, "gateway")
    try:
        config = client.get_model_config("onnx_auto", as_json=True)["config"]
        index = client.get_model_repository_index(as_json=True)["models"]
        ready = {model: client.is_model_ready(model) for model in (*GOOD, *BAD)}
    finally:
        client.close()
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4
    assert sorted(i["name"] for i in config["input"]) == ["n", "x"]
    assert {row["name"] for row in index} >= set(GOOD) | set(BAD)
    assert ready == {**dict.fromkeys(GOOD, True), **dict.fromkeys(BAD, False)}


def test_a_refused_model_is_an_error_naming_its_reason(served: _Served) -> None:
    client = _client(served, "pytorch")
    try:
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("torch_no_config")
    finally:
        client.close()
    assert BAD["torch_no_config"][1] in info.value.message()


def test_perf_analyzer_drives_a_user_model_through_the_gateway(
    perf_analyzer: Path, served: _Served
) -> None:
    command = [
        str(perf_analyzer),
        *("-m", "onnx_auto", "-i", "grpc", "-u", served.addresses["gateway"]),
        *("--concurrency-range", "1:4:3", "-p", "1000", "-s", "1000", "--max-trials", "4"),
    ]
    run = subprocess.run(
        command, check=False, capture_output=True, text=True, env=_environment(),
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert sorted(int(c) for c, _ in SUMMARY.findall(output)) == [1, 4], output[-3000:]
