"""The dynamic batcher on its own: how batches form, split back, and fail."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching import Batcher
from serving.errors import InvalidInput, ServingError
from serving.model_config import BatchingConfig

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
        model = Recorder()
        batcher = _batcher(model, max_queue_delay_us=50_000)
        gone = asyncio.create_task(batcher.submit(_x(1)))
        stays = asyncio.create_task(batcher.submit(_x(5)))
        await asyncio.sleep(0.005)
        gone.cancel()
        result = await stays
        assert result.outputs["y"].ravel().tolist() == [10]
        assert model.batches == [1]
        with pytest.raises(asyncio.CancelledError):
            await gone

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
