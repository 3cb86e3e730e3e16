"""devtools/frameworks.json, the one place the launcher, the load test and the benchmarks take
the set of frameworks from: it loads, every service it names exists, and it feeds the gateway's
`frameworks` setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from devtools.frameworks import frameworks, gateway_frameworks
from gateway.settings import GatewaySettings
from loadtest.matrix import RUNTIMES


def test_the_shipped_file_names_services_that_exist() -> None:
    known = frameworks()
    assert {"tensorflow", "pytorch", "onnx"} <= set(known)
    for name, framework in known.items():
        assert framework.name == name
        assert importlib.util.find_spec(f"{framework.module}.__main__") is not None, name
        assert framework.runtimes[0] == "native"
    # The ONNX Runtime service trains nothing: it serves the exports of one that does.
    onnx = known["onnx"]
    assert not onnx.trains
    assert any(f.trains and f.repository == onnx.repository for f in known.values())
    assert len({f.port for f in known.values()}) == len(known)


def test_the_load_test_measures_every_framework_of_the_file() -> None:
    assert {name: f.runtimes for name, f in frameworks().items()} == RUNTIMES


def test_the_gateway_setting_it_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    addresses = {"tensorflow": "127.0.0.1:8500", "onnx": "127.0.0.1:8600"}
    for key, value in gateway_frameworks(addresses).items():
        monkeypatch.setenv(key, value)
    assert GatewaySettings().urls() == addresses


_ENTRY = {"module": "m", "repository": "r", "port": 1, "metrics_port": 2}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"metrics_port": None}, "metrics_port"),
        ({"gpu": 1}, "unknown keys"),
        ({"runtimes": ["onnx"]}, "start with 'native'"),
        ({"trains": False}, "no framework that does"),
    ],
)
def test_a_bad_file_says_what_is_wrong(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    entry = {key: value for key, value in {**_ENTRY, **change}.items() if value is not None}
    path = tmp_path / "frameworks.json"
    path.write_text(json.dumps({"x": entry}))
    with pytest.raises(ValueError, match=fragment):
        frameworks(path)
