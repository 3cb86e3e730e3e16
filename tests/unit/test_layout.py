"""Triton's repository layout: a model's platform from its config.pbtxt or its files, the file
each user version holds, and which service serves it (serving/engine/layout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.backend.fake import AffineBackend
from serving.engine.layout import ModelLayout, check_platform, model_layout, served_platforms
from serving.engine.model_config import ModelConfig
from serving.engine.repository import META_FILE, ModelRepository
from serving.engine.triton_config import CONFIG_PBTXT, read_pbtxt
from serving.errors import RepositoryError

BACKEND = AffineBackend()  # platform numpy_affine, backend numpy


def _model(
    root: Path, files: dict[str, str], config: str | None = None
) -> tuple[Path, ModelConfig]:
    """A model directory holding `files` (version-relative path -> content; a name ending
    in / is a directory) and its config.pbtxt."""
    directory = root / "m"
    directory.mkdir()
    for name, content in files.items():
        path = directory / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    parsed = ModelConfig()
    if config is not None:
        (directory / CONFIG_PBTXT).write_text(config)
        parsed = read_pbtxt(directory / CONFIG_PBTXT, "m")
    return directory, parsed


@pytest.mark.parametrize(
    ("files", "platform", "file"),
    [
        ({"1/model.savedmodel/": ""}, "tensorflow_savedmodel", "model.savedmodel"),
        ({"1/model.pt": "x"}, "pytorch_libtorch", "model.pt"),
        ({"1/model.onnx": "x", "2/model.onnx": "x"}, "onnxruntime_onnx", "model.onnx"),
        # Our own versions name no platform: their model.json says what they are.
        ({"1/model.json": "{}", "1/model.onnx": "x"}, "", ""),
    ],
)
def test_without_a_config_the_platform_is_read_off_the_files(
    tmp_path: Path, files: dict[str, str], platform: str, file: str
) -> None:
    directory, config = _model(tmp_path, files)
    layout = model_layout(directory, config, BACKEND)
    assert (layout.platform, layout.file) == (platform, file)


@pytest.mark.parametrize(
    ("config", "platform", "files"),
    [
        ('platform: "pytorch_libtorch"', "pytorch_libtorch", ("model.pt",)),
        ('backend: "onnxruntime"', "onnxruntime_onnx", ("model.onnx",)),
        ('backend: "tensorflow"', "tensorflow_savedmodel", ("model.savedmodel",)),
        ('default_model_filename: "net.onnx"', "onnxruntime_onnx", ("net.onnx",)),
        ('platform: "pytorch_libtorch" default_model_filename: "w"', "pytorch_libtorch", ("w",)),
        ('backend: "numpy"', "numpy_affine", ()),  # the service's own, outside Triton's
    ],
)
def test_the_configuration_names_the_platform_and_the_file(
    tmp_path: Path, config: str, platform: str, files: tuple[str, ...]
) -> None:
    directory, parsed = _model(tmp_path, {"1/model.onnx": "x"}, config)
    assert model_layout(directory, parsed, BACKEND) == ModelLayout(platform, files)


@pytest.mark.parametrize(
    ("files", "config", "fragment"),
    [
        ({"1/model.onnx": "", "2/model.pt": ""}, None, "holding model.onnx, model.pt: set `pl"),
        ({}, 'backend: "python"', "backend 'python' is not one twinserve serves"),
        ({}, 'platform: "onnxruntime_onnx" backend: "pytorch"', "and backend 'pytorch' disag"),
    ],
)
def test_ambiguous_or_unknown_layouts_are_refused(
    tmp_path: Path, files: dict[str, str], config: str | None, fragment: str
) -> None:
    directory, parsed = _model(tmp_path, files, config)
    with pytest.raises(RepositoryError, match=fragment.replace("`", ".").replace("(", ".")):
        model_layout(directory, parsed, BACKEND)


def test_each_service_serves_its_platform_and_onnx_and_skips_another_services() -> None:
    assert served_platforms(BACKEND) == ("numpy_affine", "onnxruntime_onnx")
    assert check_platform(ModelLayout("onnxruntime_onnx", ()), BACKEND, "m") is None
    assert check_platform(ModelLayout("", ()), BACKEND, "m") is None
    skipped = check_platform(ModelLayout("pytorch_libtorch", ()), BACKEND, "m")
    assert skipped == (
        "model 'm' is a pytorch_libtorch model; this fake service serves numpy_affine and "
        "onnxruntime_onnx models"
    )
    with pytest.raises(RepositoryError, match="platform 'tensorrt_plan', which twinserve does"):
        check_platform(ModelLayout("tensorrt_plan", ()), BACKEND, "m")


def test_a_user_version_counts_once_its_file_is_there(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    _model(tmp_path, {"1/model.onnx": "x", "2/README": "still copying", "3/" + META_FILE: "{}"})
    assert repository.versions("m") == [3]  # ours only, by default
    assert repository.versions("m", ("model.onnx",)) == [1, 3]
    assert repository.incomplete("m", ("model.onnx",)) == [2]
