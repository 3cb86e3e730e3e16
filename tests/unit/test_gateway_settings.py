"""The gateway's set of frameworks: named by configuration (a mapping, plus the two legacy URL
settings folded in), and every setting that names a framework checked against it at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings

THREE = {"tensorflow": "h1:8500,h2:8500", "pytorch": "h3:7070", "onnx": "dns:///onnx:8600"}


def test_frameworks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TWINSERVE_GATEWAY_FRAMEWORKS", '{"onnx": "h4:8600", "tensorflow": "h1:8500,h2:8500"}'
    )
    monkeypatch.setenv("TWINSERVE_GATEWAY_MODEL_FRAMEWORKS", '{"house_price": "onnx"}')
    settings = GatewaySettings()
    assert settings.urls() == {"onnx": "h4:8600", "tensorflow": "h1:8500,h2:8500"}
    assert settings.default() == "onnx"  # the first configured
    assert settings.model_frameworks == {"house_price": "onnx"}


def test_the_legacy_urls_are_folded_in_first() -> None:
    settings = GatewaySettings(pytorch_url="h3:7070", frameworks={"onnx": "h4:8600"})
    assert settings.urls() == {"pytorch": "h3:7070", "onnx": "h4:8600"}
    assert settings.default() == "pytorch"
    both = GatewaySettings(tensorflow_url="h1:8500", frameworks={"tensorflow": "h1:8500"})
    assert both.urls() == {"tensorflow": "h1:8500"}


def test_an_empty_address_is_not_routed_to() -> None:
    settings = GatewaySettings(frameworks={"onnx": "", "pytorch": "h3:7070"})
    assert settings.urls() == {"pytorch": "h3:7070"}


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"default_framework": "jax"}, r"default_framework: unknown framework 'jax'"),
        (
            {"model_frameworks": {"house_price": "jax"}},
            r"model_frameworks\['house_price'\]: unknown framework 'jax'",
        ),
    ],
)
def test_settings_name_only_configured_frameworks(
    settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError, match=fragment + r".*'onnx', 'pytorch', 'tensorflow'"):
        GatewaySettings(frameworks=THREE, **settings)
    GatewaySettings(frameworks={**THREE, "jax": "h5:9000"}, **settings)


def test_a_framework_the_legacy_urls_named_is_unknown_without_its_url() -> None:
    with pytest.raises(ValidationError, match=r"unknown framework 'tensorflow'.*'onnx'"):
        GatewaySettings(frameworks={"onnx": "h4:8600"}, default_framework="tensorflow")


@pytest.mark.parametrize("name", ["", "ONNX", "on nx", "a,b", "-x"])
def test_a_bad_framework_name(name: str) -> None:
    with pytest.raises(ValidationError, match="is not a framework name"):
        GatewaySettings(frameworks={name: "h:1"})


def test_one_framework_given_twice_differently() -> None:
    with pytest.raises(ValidationError, match="'pytorch' is given as 'b:2' and as pytorch_url"):
        GatewaySettings(pytorch_url="a:1", frameworks={"pytorch": "b:2"})
