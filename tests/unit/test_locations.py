"""Where models live (gateway.locations) and the index through the gateway (gateway.index),
without servers: rounds shared by the callers that miss, a round that starts after the
caller, the last sets kept when a service does not answer."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.index import index_with_frameworks
from gateway.locations import ModelLocations
from gateway.upstream import Upstream
from serving.pb import inference_pb2 as pb


class FakeUpstream:
    """Answers `ready_models` with `models`; while `gate` is clear, holds the answer."""

    def __init__(self, *models: str) -> None:
        self.models: frozenset[str] | None = frozenset(models)
        self.asked = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    async def ready_models(self, timeout: float) -> frozenset[str] | None:
        self.asked += 1
        asked_with = self.models  # what was ready when the look began
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return asked_with


def _locations(**upstreams: FakeUpstream) -> ModelLocations:
    return ModelLocations(cast(dict[str, Upstream], upstreams), timeout=1.0, miss_wait_s=10.0)


def test_misses_share_rounds_and_wait_for_one_that_started_after_them() -> None:
    async def scenario() -> None:
        tf, pt = FakeUpstream("a"), FakeUpstream("b")
        locations = _locations(tensorflow=tf, pytorch=pt)
        await locations.refresh()
        assert (locations.serving("a"), locations.serving("b")) == (("tensorflow",), ("pytorch",))
        # A round in flight that looked before "late" was loaded...
        pt.gate.clear()
        first = asyncio.ensure_future(locations.find("other", 20.0))
        while pt.asked < 2:
            await asyncio.sleep(0)
        pt.models = frozenset({"b", "late"})
        # ...does not answer the callers that came after: they share the next one.
        finds = [asyncio.ensure_future(locations.find("late", 20.0)) for _ in range(20)]
        await asyncio.sleep(0)  # one turn of the loop: each find asks for the next round
        pt.gate.set()
        assert await first == ()
        assert [await find for find in finds] == [("pytorch",)] * 20
        assert locations.rounds == 3  # at start, the one in flight, one for all twenty

    asyncio.run(scenario())


def test_a_service_that_does_not_answer_keeps_its_last_set_and_fails_no_call() -> None:
    async def scenario() -> None:
        tf, pt = FakeUpstream("a"), FakeUpstream("b")
        locations = _locations(tensorflow=tf, pytorch=pt)
        await locations.refresh()
        pt.models = None  # no replica answered
        tf.fail = RuntimeError("a bug of ours")
        assert await locations.find("c", 20.0) == ()
        assert locations.serving("b") == ("pytorch",)
        assert locations.serving("a") == ("tensorflow",)
        # Without time to wait, a miss does not look at all.
        rounds = locations.rounds
        assert await locations.find("c", 0.0) == ()
        assert locations.rounds == rounds
        await locations.close()

    asyncio.run(scenario())


def _entry(name: str, version: str, state: str = "READY", reason: str = "") -> Any:
    return pb.RepositoryIndexResponse.ModelIndex(
        name=name, version=version, state=state, reason=reason
    )


def test_the_index_names_each_entrys_framework() -> None:
    tf = pb.RepositoryIndexResponse(models=[_entry("m", "10"), _entry("m", "2")])
    pt = pb.RepositoryIndexResponse(
        models=[_entry("a", "1"), _entry("m", "2"), _entry("z", "", "UNAVAILABLE", "unloaded")]
    )
    index = index_with_frameworks([("tensorflow", tf), ("pytorch", pt)])
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("a", "1", "READY", "framework=pytorch"),
        ("m", "2", "READY", "framework=tensorflow"),
        ("m", "2", "READY", "framework=pytorch"),
        ("m", "10", "READY", "framework=tensorflow"),
        ("z", "", "UNAVAILABLE", "framework=pytorch; unloaded"),
    ]
