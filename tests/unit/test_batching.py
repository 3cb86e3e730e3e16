"""The dynamic batcher on its own: how batches form, split back, and fail."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.engine.batching import Batcher, BatchResult
from serving.engine.model_config import BatchingConfig
from serving.errors import InvalidInput, ServingError

Arrays = dict[str, np.ndarray]


class Recorder:
    """A model that doubles its input and records the batches it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay = delay

    async def __call__(self, arrays: Arrays) -> Arrays:
        self.batches.append(len(arrays["x"]))
        await asyncio.sleep(self.delay)
        return {"y": arrays["x"] * 2}


def _batcher(model: Recorder, instances: int = 1, **config: object) -> Batcher:
    settings = BatchingConfig(**{"max_batch_size": 8, **config})  # type: ignore[arg-type]
    return Batcher(settings, model, instances=instances, on_batch=lambda rows, ns: None)


def _x(*values: float, width: int = 1) -> Arrays:
    return {"x": np.repeat(np.array(values, np.float32).reshape(-1, 1), width, axis=1)}


class Held(Recorder):
    """A model whose calls wait until `release` is set; `entered` is set when one waits."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, arrays: Arrays) -> Arrays:
        self.batches.append(len(arrays["x"]))
        self.entered.set()
        await self.release.wait()
        return {"y": arrays["x"] * 2}


def _values(result: BatchResult) -> list[float]:
    return [float(v) for v in result.outputs["y"].ravel()]


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    async def main() -> None:
        model = Recorder(delay=0.01)
        batcher = _batcher(model, max_queue_delay_us=5000)
        results = await asyncio.gather(
            batcher.submit(_x(1)), batcher.submit(_x(2, 3)), batcher.submit(_x(4))
        )
        assert [r.outputs["y"].ravel().tolist() for r in results] == [[2], [4, 6], [8]]
        assert model.batches == [4]
        assert all(r.batch_rows == 4 for r in results)

    asyncio.run(main())


def test_batches_stop_at_max_batch_size_and_cut_to_a_preferred_size() -> None:
    async def main() -> None:
        model = Recorder(delay=0.01)
        batcher = _batcher(model, max_queue_delay_us=5000, preferred_batch_sizes=(2, 4))
        # Rows 1, 1, 1, 2 add up to 1, 2, 3, 5: 4 is never reached, so the first batch is the
        # longest prefix of a preferred size, 2 rows; the rest follows.
        sizes = [1, 1, 1, 2]
        results = await asyncio.gather(
            *(batcher.submit(_x(*[float(i)] * n)) for i, n in enumerate(sizes))
        )
        assert [len(r.outputs["y"]) for r in results] == sizes
        assert model.batches[0] == 2 and sum(model.batches) == 5

    asyncio.run(main())


def test_requests_of_other_trailing_shapes_are_not_mixed() -> None:
    async def main() -> None:
        model = Recorder(delay=0.01)
        batcher = _batcher(model, max_queue_delay_us=5000)
        narrow, wide = await asyncio.gather(
            batcher.submit(_x(1, width=1)), batcher.submit(_x(2, width=3))
        )
        assert narrow.outputs["y"].shape == (1, 1) and wide.outputs["y"].shape == (1, 3)
        assert model.batches == [1, 1]

    asyncio.run(main())


def test_a_cancelled_caller_is_skipped_and_others_still_answered() -> None:
    async def main() -> None:
        model = Held()
        batcher = _batcher(model, max_queue_delay_us=0)
        # The one instance is busy, so both callers are still queued when one goes away.
        busy = asyncio.create_task(batcher.submit(_x(100)))
        await asyncio.wait_for(model.entered.wait(), 5)
        gone = asyncio.create_task(batcher.submit(_x(1)))
        stays = asyncio.create_task(batcher.submit(_x(5)))
        await asyncio.sleep(0)  # one loop pass: both submits enqueue
        assert batcher.queued == 2
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.release.set()
        assert _values(await stays) == [10]
        assert _values(await busy) == [200]
        assert model.batches == [1, 1]

    asyncio.run(main())


def test_a_model_error_reaches_every_request_of_the_batch() -> None:
    async def failing(arrays: Arrays) -> Arrays:
        raise InvalidInput("no")

    async def wrong_rows(arrays: Arrays) -> Arrays:
        return {"y": arrays["x"][:1]}

    async def main() -> None:
        for run, error in ((failing, InvalidInput), (wrong_rows, ServingError)):
            batcher = Batcher(
                BatchingConfig(8, 5000), run, instances=1, on_batch=lambda rows, ns: None
            )
            results = await asyncio.gather(
                batcher.submit(_x(1)), batcher.submit(_x(2)), return_exceptions=True
            )
            assert all(isinstance(r, error) for r in results), results
            assert batcher.queued == 0

    asyncio.run(main())


def test_a_caller_cancelled_while_its_batch_runs_leaves_the_others_their_own_rows() -> None:
    async def main() -> None:
        model = Held()
        # 1 + 2 + 1 rows fill max_batch_size 4: one batch, sent at once.
        batcher = _batcher(model, max_batch_size=4, max_queue_delay_us=5_000_000)
        first = asyncio.create_task(batcher.submit(_x(1)))
        gone = asyncio.create_task(batcher.submit(_x(2, 3)))
        last = asyncio.create_task(batcher.submit(_x(4)))
        await asyncio.wait_for(model.entered.wait(), 5)
        assert model.batches == [4]
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        model.release.set()
        assert _values(await first) == [2]
        assert _values(await last) == [8]  # not the cancelled caller's 4, 6

    asyncio.run(main())


def test_equal_sized_requests_get_exactly_their_own_rows() -> None:
    async def main() -> None:
        model = Recorder(delay=0.001)
        batcher = _batcher(model, max_batch_size=8, max_queue_delay_us=5000)
        # Six requests of two rows each, every value distinct: batches of 4 and 2 requests.
        sent = [(10.0 * i + 1, 10.0 * i + 2) for i in range(6)]
        results = await asyncio.gather(*(batcher.submit(_x(*values)) for values in sent))
        assert [_values(r) for r in results] == [[2 * a, 2 * b] for a, b in sent]
        assert model.batches == [8, 4]

    asyncio.run(main())


@pytest.mark.parametrize("preferred", [(), (2, 4)], ids=["max_batch_size", "preferred"])
def test_a_full_batch_goes_at_once_without_waiting_the_queue_delay(
    preferred: tuple[int, ...],
) -> None:
    async def main() -> None:
        model = Recorder()
        delay_s = 5.0
        batcher = _batcher(
            model,
            max_batch_size=4,
            max_queue_delay_us=int(delay_s * 1e6),
            preferred_batch_sizes=preferred,
        )
        sent = batcher.submit(_x(1)), batcher.submit(_x(2, 3)), batcher.submit(_x(4))
        # A batch that waited out the delay would miss this deadline by seconds.
        results = await asyncio.wait_for(asyncio.gather(*sent), delay_s / 2)
        assert [_values(r) for r in results] == [[2], [4, 6], [8]]
        assert model.batches == [4]

    asyncio.run(main())


def test_a_batch_fills_to_exactly_max_batch_size_and_the_next_row_waits() -> None:
    async def main() -> None:
        model = Held()
        batcher = _batcher(model, max_batch_size=4, max_queue_delay_us=0)
        # The one instance is busy with a first request, so the next five rows all queue
        # before a batch is taken from them.
        busy = asyncio.create_task(batcher.submit(_x(100)))
        await asyncio.wait_for(model.entered.wait(), 5)
        queued = [asyncio.create_task(batcher.submit(_x(*v))) for v in ((1,), (2,), (3, 4), (5,))]
        await asyncio.sleep(0)  # let every submit enqueue (no timing: one loop pass)
        assert batcher.queued == 4
        model.release.set()
        results = await asyncio.gather(busy, *queued)
        assert [_values(r) for r in results] == [[200], [2], [4], [6, 8], [10]]
        assert model.batches == [1, 4, 1]
        assert [r.batch_rows for r in results] == [1, 4, 4, 4, 1]

    asyncio.run(main())


def test_inputs_with_different_row_counts_are_refused() -> None:
    async def main() -> None:
        model = Recorder()
        batcher = _batcher(model, max_queue_delay_us=0)
        mixed = {"x": np.ones((2, 1), np.float32), "z": np.ones((1, 1), np.float32)}
        with pytest.raises(InvalidInput, match="same number of rows") as info:
            await batcher.submit(mixed)
        assert "'x' has 2, 'z' has 1" in str(info.value)
        assert model.batches == [] and batcher.queued == 0

    asyncio.run(main())
