"""Routing policies, the router's choices, answer differences and shadow histograms, without
servers."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from gateway.difference import Output, decode_outputs, max_abs_diff
from gateway.policy import ModelPolicy, PolicyError, parse_policies
from gateway.routing import Route, Router
from gateway.shadow import Histogram
from serving.errors import InvalidInput
from serving.pb import inference_pb2 as pb

BOTH = ("tensorflow", "pytorch")


def test_parse_every_kind() -> None:
    policies = parse_policies(
        '{"a": {"framework": "pytorch"}, "b": {"split": {"tensorflow": 3, "pytorch": 1}},'
        ' "c": {"serve": "pytorch", "shadow": "tensorflow"}}'
    )
    assert [policies[m].primary for m in "abc"] == ["pytorch", "tensorflow", "pytorch"]
    assert policies["c"].shadow == "tensorflow"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[]", "should be an object"),
        ('{"a": {}}', "none"),
        ('{"a": {"split": {"tensorflow": 0}}}', "zero"),
        ('{"a": {"serve": "pytorch", "shadow": "pytorch"}}', "differ"),
        ('{"a": {"shadow": "pytorch", "framework": "pytorch"}}', "together"),
    ],
)
def test_parse_refuses(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        parse_policies(text)


def test_split_by_request_id_is_stable_and_weighted() -> None:
    policy = ModelPolicy(split={"tensorflow": 90, "pytorch": 10})
    picks = [policy.pick("m", f"id-{i}") for i in range(10_000)]
    assert picks == [policy.pick("m", f"id-{i}") for i in range(10_000)]
    assert picks.count("pytorch") / len(picks) == pytest.approx(0.10, abs=0.01)
    # The model is part of the hash: another model's split of the same ids differs.
    assert picks != [policy.pick("other", f"id-{i}") for i in range(10_000)]


def test_split_key_order_does_not_move_requests() -> None:
    one = ModelPolicy(split={"tensorflow": 50, "pytorch": 50})
    other = ModelPolicy(split={"pytorch": 50, "tensorflow": 50})
    assert [one.pick("m", str(i)) for i in range(500)] == [
        other.pick("m", str(i)) for i in range(500)
    ]


def test_zero_weight_is_never_picked() -> None:
    policy = ModelPolicy(split={"tensorflow": 0, "pytorch": 5})
    assert {policy.pick("m", str(i)) for i in range(1000)} == {"pytorch"}
    assert {policy.pick("m") for _ in range(200)} == {"pytorch"}


def test_router_routes() -> None:
    router = Router(BOTH, "tensorflow", {"d": "pytorch"})
    router.apply(parse_policies('{"s": {"serve": "tensorflow", "shadow": "pytorch"}}'))
    assert asyncio.run(router.route("d", {})) == Route("pytorch")
    assert asyncio.run(router.route("x", {})) == Route("tensorflow")
    assert asyncio.run(router.route("s", {})) == Route("tensorflow", "pytorch")
    assert asyncio.run(router.route("s", {"x-framework": "pytorch"})) == Route("pytorch")
    # A new file replaces the file's policies; the settings' stay underneath.
    router.apply({})
    assert asyncio.run(router.route("s", {})) == Route("tensorflow")
    assert asyncio.run(router.route("d", {})) == Route("pytorch")


def test_router_refuses_a_framework_it_is_not_configured_with() -> None:
    router = Router(("tensorflow", "onnx"), "tensorflow", {})
    assert asyncio.run(router.route("s", {"x-framework": "onnx"})) == Route("onnx")
    for asked in ("pytorch", "jax"):
        with pytest.raises(InvalidInput, match=f"'{asked}'.*serves 'onnx', 'tensorflow'"):
            asyncio.run(router.route("s", {"x-framework": asked}))
        with pytest.raises(InvalidInput, match=f"'{asked}'"):
            asyncio.run(router.choose("s", {}, {"framework": asked}))


@pytest.mark.parametrize(
    "text",
    [
        '{"s": {"framework": "pytorch"}}',
        '{"s": {"serve": "tensorflow", "shadow": "pytorch"}}',
        '{"s": {"split": {"tensorflow": 1, "pytorch": 1}}}',
    ],
)
def test_policies_may_name_only_configured_frameworks(text: str) -> None:
    parse_policies(text)  # no set given: any name
    with pytest.raises(PolicyError, match=r"s: unknown framework 'pytorch'.*'onnx', 'tensorflow'"):
        parse_policies(text, {"tensorflow", "onnx"})


def test_a_third_framework_in_every_kind_of_policy() -> None:
    frameworks = ("tensorflow", "pytorch", "onnx")
    policies = parse_policies(
        '{"a": {"framework": "onnx"}, "b": {"split": {"onnx": 1, "pytorch": 0}},'
        ' "c": {"serve": "tensorflow", "shadow": "onnx"}}',
        frameworks,
    )
    router = Router(frameworks, "pytorch", {})
    router.apply(policies)
    assert asyncio.run(router.route("a", {})) == Route("onnx")
    assert asyncio.run(router.route("b", {}, request_id="x")) == Route("onnx")
    assert asyncio.run(router.route("c", {})) == Route("tensorflow", "onnx")


def _out(*values: float, datatype: str = "FP32") -> Output:
    return Output("y", datatype, np.array(values, dtype=np.float32))


@pytest.mark.parametrize(
    ("first", "second", "gap"),
    [
        (_out(1.0, 2.0), _out(1.5, 1.0), 1.0),
        (_out(math.nan, 1.0), _out(math.nan, 1.0), 0.0),
        (_out(math.nan), _out(1.0), math.inf),
        (_out(math.inf), _out(math.inf), 0.0),
        (_out(math.inf), _out(-math.inf), math.inf),
        (_out(), _out(), 0.0),
    ],
)
def test_max_abs_diff(first: Output, second: Output, gap: float) -> None:
    assert max_abs_diff(first, second) == (gap, "")


def test_max_abs_diff_cannot_compare() -> None:
    assert max_abs_diff(_out(1.0), _out(1.0, 2.0))[1].startswith("shapes differ")
    words = Output("w", "BYTES", np.array([b"a"], dtype=object))
    assert max_abs_diff(words, words) == (None, "BYTES outputs are not compared")


def test_decode_raw_and_typed_outputs() -> None:
    raw = pb.ModelInferResponse()
    raw.outputs.add(name="y", datatype="FP32", shape=[2, 1])
    raw.raw_output_contents.append(np.array([1.0, 2.0], dtype="<f4").tobytes())
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="y", datatype="INT32", shape=[2, 1]).contents.int_contents.extend([1, 3])
    (a,), (b,) = decode_outputs(raw), decode_outputs(typed)
    assert a.array.shape == b.array.shape == (2, 1)
    assert max_abs_diff(a, b) == (1.0, "")


def test_histogram_buckets() -> None:
    histogram = Histogram((1.0, 10.0))
    for value in (0.5, 1.0, 1.5, 10.0, 11.0, math.inf):
        histogram.observe(value)
    assert histogram.upper_bounds == (1.0, 10.0, math.inf)
    assert histogram.counts == [2, 2, 2]
    assert histogram.count == 6
