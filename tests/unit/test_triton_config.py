"""Triton's config.pbtxt: parsed with Triton's field names, refused with the file, line and
field named, and checked against the service and each version's signature."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from serving.backend.fake import AffineBackend
from serving.engine.model_config import (
    CONFIG_FILE,
    BatchingConfig,
    InstanceGroup,
    ModelConfig,
    VersionPolicy,
)
from serving.engine.repository import ModelRepository
from serving.engine.triton_config import (
    CONFIG_PBTXT,
    check_service,
    check_signature,
    read_pbtxt,
)
from serving.errors import RepositoryError
from serving.types import Signature, TensorSpec

MODEL = "price"
SIGNATURE = Signature(
    inputs=(TensorSpec("size", "FP32", (-1, 1)), TensorSpec("rooms", "INT64", (-1, 3))),
    outputs=(TensorSpec("price", "FP32", (-1, 1)),),
)
FULL = """
name: "price"
platform: "numpy_affine"
backend: "numpy"
max_batch_size: 8
version_policy { specific { versions: [1, 3] } }
input [
  { name: "size" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "rooms" data_type: TYPE_INT64 dims: [ 3 ] }
]
output [ { name: "price" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { name: "one" kind: KIND_CPU count: 1 } ]
parameters { key: "owner" value: { string_value: "pricing team" } }
"""


def _read(tmp_path: Path, text: str) -> ModelConfig:
    path = tmp_path / CONFIG_PBTXT
    path.write_text(text)
    return read_pbtxt(path, MODEL)


def _refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(RepositoryError) as info:
        _read(tmp_path, text)
    return info.value.message


def test_a_full_configuration_maps_onto_the_engine_settings(tmp_path: Path) -> None:
    assert _read(tmp_path, FULL) == ModelConfig(
        policy=VersionPolicy("specific", versions=(1, 3)),
        batching=BatchingConfig(8, 500, (4, 8), 64),
        max_batch_size=8,
        source=f"{MODEL}/{CONFIG_PBTXT}",
        platform="numpy_affine",
        backend="numpy",
        inputs=(TensorSpec("size", "FP32", (1,)), TensorSpec("rooms", "INT64", (3,))),
        outputs=(TensorSpec("price", "FP32", (1,)),),
        instance_groups=(InstanceGroup("KIND_CPU", 1),),
        parameters=(("owner", "pricing team"),),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ModelConfig(source=f"{MODEL}/{CONFIG_PBTXT}")),
        ("version_policy: { latest: { num_versions: 2 } }", VersionPolicy("latest", 2)),
        ("version_policy { all {} }", VersionPolicy("all")),
    ],
)
def test_version_policies_and_the_empty_file(
    tmp_path: Path, text: str, expected: ModelConfig | VersionPolicy
) -> None:
    config = _read(tmp_path, text)
    assert (config if isinstance(expected, ModelConfig) else config.policy) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # What text format refuses: the line and column, then the field.
        ('name: "price"\noptimization { }', ':2:1: Message type "inference.ModelConfig" has no'),
        ("input [ { name: 'x' is_shape_tensor: 1 } ]", ':1:21: Message type "inference.Mod'),
        ("max_batch_size: 4\ninput [{ data_type: TYPE_FOO }]", ":2:21: 'input [{ data_type: TYP"),
        ('max_batch_size: "four"', ":1:17: 'max_batch_size:"),
        ("max_batch_size: 1\nmax_batch_size: 2", ':2:17: Message type "inference.ModelConfig" sh'),
        # The checks after it: the field.
        ('name: "cost"', ": name 'cost' is not the model's directory 'price'"),
        ("dynamic_batching { }", ": dynamic_batching needs max_batch_size of at least 1"),
        ("max_batch_size: -1", ": max_batch_size must be an integer of at least 0, got -1"),
        ('default_model_filename: "../m.pt"', ": default_model_filename '../m.pt' must be a f"),
        ("input [{ name: 'x' data_type: TYPE_FP32 format: FORMAT_NCHW }]", ": input[0].format F"),
        (
            "input [{ name: 'x' data_type: TYPE_FP32 dims: [2, 3] reshape { shape: [5] } }]",
            ": input[0].reshape [5] does not hold the elements of dims [2, 3]",
        ),
        (
            "output [{ name: 'y' data_type: TYPE_FP32 dims: [1] label_filename: '../l' }]",
            ": output 'y' label_filename '../l' must be a file name",
        ),
        ("output [{ name: 'y' data_type: TYPE_FP32 dims: [-2] }]", ": output[0].dims [-2]: a "),
        ("input [{ name: 'x' }]", ": input[0].data_type must be a TYPE_ other than TYPE_INVALID"),
        ("input [{ data_type: TYPE_FP32 }]", ": input[0].name is missing"),
        (
            "input [{ name: 'x' data_type: TYPE_FP32 }, { name: 'x' data_type: TYPE_FP32 }]",
            ": input[1].name 'x' is declared twice",
        ),
        (
            "max_batch_size: 4\ndynamic_batching { preserve_ordering: true }",
            ": dynamic_batching.preserve_ordering is not supported yet",
        ),
        (
            "max_batch_size: 4\ndynamic_batching { preferred_batch_size: [8] }",
            ": preferred_batch_size 8 exceeds max_batch_size 4",
        ),
        (
            "max_batch_size: 4\n"
            "dynamic_batching { default_queue_policy { default_timeout_microseconds: 9 } }",
            ": dynamic_batching.default_queue_policy.default_timeout_microseconds is not supp",
        ),
        ("version_policy { }", ": version_policy must set one of latest, all, specific"),
        ("version_policy { latest { } }", ": latest.num_versions must be at least 1"),
        ("version_policy { specific { } }", ": specific.versions must list positive"),
        ("parameters { key: 'framework' value { string_value: 'x' } }", ": parameters 'framew"),
        ("instance_group [{ kind: 9 }]", ": instance_group[0].kind 9 is not a Triton instance"),
        ("instance_group [{ count: -1 }]", ": instance_group[0]: count and gpus cannot be neg"),
    ],
)
def test_refusals_name_the_file_and_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    message = _refusal(tmp_path, text)
    assert message.startswith(f"{MODEL}/{CONFIG_PBTXT}")
    assert fragment in message


def test_a_model_with_both_layouts_is_refused(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    (tmp_path / MODEL).mkdir()
    (tmp_path / MODEL / CONFIG_PBTXT).write_text("max_batch_size: 4")
    assert repository.read_config(MODEL).max_batch_size == 4
    (tmp_path / MODEL / CONFIG_FILE).write_text("{}")
    with pytest.raises(RepositoryError, match=r"has both config\.json and config\.pbtxt"):
        repository.read_config(MODEL)


def _on(device: str) -> AffineBackend:
    backend = AffineBackend()
    backend.device = device
    return backend


@pytest.mark.parametrize(
    ("text", "device", "fragment"),
    [
        ("instance_group [{ kind: KIND_GPU }]", "cpu", "instance_group[0].kind KIND_GPU, but"),
        ("instance_group [{ kind: KIND_CPU }]", "cuda:1", "kind KIND_CPU, but this service ru"),
        ("instance_group [{ gpus: [0] }]", "cuda:1", "instance_group[0].gpus [0], but this s"),
        ("instance_group [{ gpus: [0] }]", "cpu", "instance_group[0].gpus [0], but this serv"),
    ],
)
def test_another_device_is_refused(tmp_path: Path, text: str, device: str, fragment: str) -> None:
    config = _read(tmp_path, text)
    with pytest.raises(RepositoryError) as info:
        check_service(config, _on(device))
    assert info.value.message.startswith(f"{MODEL}/{CONFIG_PBTXT}: ")
    assert fragment in info.value.message


def test_what_this_service_serves_passes_and_an_unhonoured_count_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check_service(_read(tmp_path, FULL), _on("cpu"))
    gpu = _read(tmp_path, "instance_group [{ kind: KIND_GPU gpus: [1] count: 2 }]")
    with caplog.at_level(logging.WARNING, "serving.engine.triton_config"):
        check_service(gpu, _on("cuda:1"))
    assert "instance_group[0].count 2 is not honoured" in caplog.text


def test_declared_tensors_matching_the_signature_pass(tmp_path: Path) -> None:
    check_signature(_read(tmp_path, FULL), SIGNATURE, 1)
    unbatched = "output [ { name: 'price' data_type: TYPE_FP32 dims: [ -1, 1 ] } ]"
    check_signature(_read(tmp_path, unbatched), SIGNATURE, 1)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "output [{ name: 'cost' data_type: TYPE_FP32 dims: [-1, 1] }]",
            "output names ['cost'], but version 2 has ['price']",
        ),
        (
            "input [{ name: 'size' data_type: TYPE_FP32 dims: [-1, 1] }]",
            "input names ['size'], but version 2 has ['rooms', 'size']",
        ),
        (
            "output [{ name: 'price' data_type: TYPE_FP64 dims: [-1, 1] }]",
            "output 'price' data_type FP64, but version 2 takes FP32",
        ),
        (
            "max_batch_size: 4\noutput [{ name: 'price' data_type: TYPE_FP32 dims: [-1, 1] }]",
            "output 'price' dims [-1, 1], but version 2 has shape [-1, 1] (with max_batch_size",
        ),
        (
            "output [{ name: 'price' data_type: TYPE_FP32 dims: [1] }]",
            "output 'price' dims [1], but version 2 has shape [-1, 1]",
        ),
    ],
)
def test_declared_tensors_that_are_not_the_versions_are_refused(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(RepositoryError) as info:
        check_signature(_read(tmp_path, text), SIGNATURE, 2)
    assert info.value.message.startswith(f"{MODEL}/{CONFIG_PBTXT}: ")
    assert fragment in info.value.message


def test_max_batch_size_needs_a_batch_dimension(tmp_path: Path) -> None:
    fixed = Signature(inputs=SIGNATURE.inputs, outputs=(TensorSpec("price", "FP32", (2, 1)),))
    config = _read(tmp_path, "max_batch_size: 2\noutput [{ name: 'price' data_type: TYPE_FP32 }]")
    with pytest.raises(RepositoryError, match="max_batch_size > 0, but version 1 has no batch"):
        check_signature(config, fixed, 1)
