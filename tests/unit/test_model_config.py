"""Per-model configuration: parsing `config.json` and choosing versions by policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.engine.model_config import (
    CONFIG_FILE,
    DEFAULT_MAX_QUEUE_SIZE,
    BatchingConfig,
    ModelConfig,
    VersionPolicy,
)
from serving.errors import RepositoryError


def _read(tmp_path: Path, text: str) -> ModelConfig:
    path = tmp_path / CONFIG_FILE
    path.write_text(text)
    return ModelConfig.read(path)


def test_missing_file_means_the_service_defaults(tmp_path: Path) -> None:
    assert ModelConfig.read(tmp_path / CONFIG_FILE) == ModelConfig(None, "native")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, ModelConfig()),
        ({"runtime": "onnx"}, ModelConfig(runtime="onnx")),
        (
            {"version_policy": {"latest": {"num_versions": 2}}},
            ModelConfig(VersionPolicy("latest", num_versions=2)),
        ),
        ({"version_policy": {"latest": {}}}, ModelConfig(VersionPolicy("latest", 1))),
        ({"version_policy": {"latest": None}}, ModelConfig(VersionPolicy("latest", 1))),
        ({"version_policy": {"all": {}}}, ModelConfig(VersionPolicy("all"))),
        (
            {"version_policy": {"specific": {"versions": [3, 1]}}, "runtime": "tflite"},
            ModelConfig(VersionPolicy("specific", versions=(3, 1)), "tflite"),
        ),
    ],
)
def test_valid_configurations(tmp_path: Path, raw: object, expected: ModelConfig) -> None:
    assert _read(tmp_path, json.dumps(raw)) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not a valid model configuration"),
        ("[1, 2]", "not a valid model configuration"),
        ('{"version_policy": {"newest": {}}}', "unknown version policy 'newest'"),
        ('{"version_policy": {"all": {}, "latest": {}}}', "exactly one of"),
        ('{"version_policy": "all"}', "exactly one of"),
        ('{"version_policy": {"latest": {"num_versions": 0}}}', "at least 1"),
        ('{"version_policy": {"latest": {"num_versions": "two"}}}', "two"),
        ('{"version_policy": {"latest": 5}}', "not a valid model configuration"),
        ('{"version_policy": {"specific": {"versions": []}}}', "positive version numbers"),
        ('{"version_policy": {"specific": {"versions": [0, 2]}}}', "positive version numbers"),
        ('{"version_policy": {"specific": {"versions": 3}}}', "not a valid model configuration"),
        ('{"versions_policy": {"all": {}}}', "unknown key(s) versions_policy"),
    ],
)
def test_invalid_configurations_say_what_is_wrong(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(RepositoryError) as info:
        _read(tmp_path, text)
    assert fragment in info.value.message
    assert CONFIG_FILE in info.value.message


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        (VersionPolicy("latest", num_versions=1), [1, 2, 3], [3]),
        (VersionPolicy("latest", num_versions=2), [1, 2, 3], [2, 3]),
        (VersionPolicy("latest", num_versions=5), [1, 2, 3], [1, 2, 3]),
        (VersionPolicy("latest", num_versions=2), [], []),
        (VersionPolicy("all"), [1, 4, 9], [1, 4, 9]),
        (VersionPolicy("all"), [], []),
        (VersionPolicy("specific", versions=(1, 3)), [1, 2, 3], [1, 3]),
        (VersionPolicy("specific", versions=(3, 1)), [1, 2, 3], [1, 3]),
        (VersionPolicy("specific", versions=(1, 7)), [1, 2, 3], [1]),
        (VersionPolicy("specific", versions=(7,)), [1, 2, 3], []),
    ],
)
def test_select(policy: VersionPolicy, available: list[int], selected: list[int]) -> None:
    assert policy.select(available) == selected


def test_batching_reads_tritons_names(tmp_path: Path) -> None:
    raw = {
        "max_batch_size": 32,
        "dynamic_batching": {
            "max_queue_delay_microseconds": 500,
            "preferred_batch_size": [16, 8, 16],
            "default_queue_policy": {"max_queue_size": 100},
        },
    }
    config = _read(tmp_path, json.dumps(raw))
    assert config.batching == BatchingConfig(32, 500, (8, 16), 100)
    # Defaults: no delay, no preferred sizes, a bounded queue.
    config = _read(tmp_path, json.dumps({"max_batch_size": 4, "dynamic_batching": {}}))
    assert config.batching == BatchingConfig(4, 0, (), DEFAULT_MAX_QUEUE_SIZE)
    assert config.max_batch_size == 4


def test_max_batch_size_without_batching_only_bounds_rows(tmp_path: Path) -> None:
    """Triton's meaning: the rows a request may have, whether or not requests are batched."""
    config = _read(tmp_path, json.dumps({"max_batch_size": 4}))
    assert (config.batching, config.max_batch_size) == (None, 4)
    assert _read(tmp_path, "{}").max_batch_size == 0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"dynamic_batching": {}}, "needs max_batch_size"),
        ({"max_batch_size": -1, "dynamic_batching": {}}, "max_batch_size must be an integer"),
        ({"max_batch_size": True, "dynamic_batching": {}}, "max_batch_size must be an integer"),
        ({"max_batch_size": 4, "dynamic_batching": []}, "must be an object"),
        ({"max_batch_size": 4, "dynamic_batching": {"priority_levels": 2}}, "unknown"),
        ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}}, "exceeds"),
        ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [0]}}, "at least 1"),
        ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": 2}}, "a list"),
        (
            {"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": -5}},
            "max_queue_delay_microseconds",
        ),
        (
            {"max_batch_size": 4, "dynamic_batching": {"default_queue_policy": {"x": 1}}},
            "only max_queue_size",
        ),
    ],
)
def test_bad_batching_is_refused_with_the_reason(
    tmp_path: Path, raw: dict[str, object], fragment: str
) -> None:
    with pytest.raises(RepositoryError, match=fragment):
        _read(tmp_path, json.dumps(raw))
