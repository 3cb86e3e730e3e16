"""Dynamic batching: requests for one model version and runtime that arrive close together run
as one framework call, concatenated along the first dimension and split back per request.

Triton's rules: a batch is sent as soon as it is full (`max_batch_size` rows, or the largest
preferred size), else when its oldest request has waited `max_queue_delay_us`; with no delay,
whatever is queued goes as soon as an instance is free. While every instance is busy, requests
queue up, which is what forms batches under load. The queue is bounded (`max_queue_size`
requests); past it a request is refused with RESOURCE_EXHAUSTED rather than left to wait.

Everything here runs on the event loop; only `run` (the framework call) may leave it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serving.engine.model_config import BatchingConfig
from serving.errors import InvalidInput, ResourceExhausted, ServingError

__all__ = ["BatchResult", "Batcher"]

Arrays = dict[str, np.ndarray]
Run = Callable[[Arrays], Awaitable[Arrays]]
# Called after each batch ran: (rows in the batch, nanoseconds of the framework call).
OnBatch = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: Arrays  # this request's rows of every output
    queue_ns: int  # from arrival to the start of its batch's framework call
    compute_ns: int  # the batch's framework call
    batch_rows: int  # rows in the batch it ran in


@dataclass(eq=False, slots=True)
class _Pending:
    arrays: Arrays
    rows: int
    # Requests batch only with requests of the same trailing shapes and dtypes (a model
    # with a variable non-batch dimension gets requests that cannot be concatenated).
    kind: tuple[tuple[str, str, tuple[int, ...]], ...]
    future: asyncio.Future[BatchResult]
    arrived_ns: int


def _kind(arrays: Arrays) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in arrays.items()))


def _rows(arrays: Arrays) -> int:
    """The request's batch size. Every input must have it: a batch is cut back into requests
    by row counts, so one input with more rows than another would hand rows of one request to
    its neighbours in the batch (Triton refuses this too: "batch size does not match")."""
    counts = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
    rows = next(iter(counts.values()))
    if len(set(counts.values())) > 1 or rows == 0:
        found = ", ".join(f"'{name}' has {count}" for name, count in counts.items())
        raise InvalidInput(
            "every input of a batched model needs the same number of rows, at least one "
            f"(the first dimension is the batch): {found}; send one row per sample in each input"
        )
    return rows


class Batcher:
    def __init__(self, config: BatchingConfig, run: Run, *, instances: int, on_batch: OnBatch):
        self.config = config
        self._run = run
        self._instances = instances
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, arrays: Arrays) -> BatchResult:
        rows = _rows(arrays)
        limit = self.config.max_batch_size
        if rows > limit:
            raise InvalidInput(
                f"the request has {rows} rows; this model batches at most {limit} per call "
                f"(max_batch_size): send at most {limit} rows a request"
            )
        if len(self._queue) >= self.config.max_queue_size:
            raise ResourceExhausted(
                f"the batching queue is full ({self.config.max_queue_size} requests waiting); "
                "retry later"
            )
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        pending = _Pending(arrays, rows, _kind(arrays), future, time.perf_counter_ns())
        self._queue.append(pending)
        self._schedule()
        # A caller that goes away cancels its future; its batch then skips it.
        return await pending.future

    def _schedule(self) -> None:
        while self._running < self._instances and self._queue:
            wait_ns = self._wait_ns()
            if wait_ns > 0:
                if self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(wait_ns / 1e9, self._expire)
                return
            batch = self._take()
            if not batch:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _expire(self) -> None:
        self._timer = None
        self._schedule()

    def _wait_ns(self) -> int:
        """How much longer the queue should wait for more requests; 0: send now."""
        delay_ns = self.config.max_queue_delay_us * 1000
        if delay_ns == 0:
            return 0
        preferred = self.config.preferred_batch_sizes
        full = preferred[-1] if preferred else self.config.max_batch_size
        if sum(p.rows for p in self._queue) >= full:
            return 0
        return max(0, self._queue[0].arrived_ns + delay_ns - time.perf_counter_ns())

    def _take(self) -> list[_Pending]:
        """The next batch: queued requests of the first live request's kind, in arrival order,
        up to max_batch_size rows, cut back to a preferred size where one fits."""
        live = [p for p in self._queue if not p.future.done()]
        if not live:
            self._queue.clear()
            return []
        kind = live[0].kind
        batch: list[_Pending] = []
        rows = 0
        for pending in live:
            if pending.kind == kind and rows + pending.rows <= self.config.max_batch_size:
                batch.append(pending)
                rows += pending.rows
        preferred = self.config.preferred_batch_sizes
        if preferred and rows not in preferred:
            cut, total = 0, 0
            for index, pending in enumerate(batch, start=1):
                total += pending.rows
                if total in preferred:
                    cut = index
            if cut:
                batch = batch[:cut]
        taken = {id(p) for p in batch}
        self._queue = deque(p for p in live if id(p) not in taken)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            names = batch[0].arrays.keys()
            inputs = (
                batch[0].arrays
                if len(batch) == 1
                else {n: np.concatenate([p.arrays[n] for p in batch]) for n in names}
            )
            rows = sum(p.rows for p in batch)
            started = time.perf_counter_ns()
            outputs = await self._run(inputs)
            compute_ns = time.perf_counter_ns() - started
            for name, output in outputs.items():
                if output.ndim == 0 or len(output) != rows:
                    raise ServingError(
                        f"output '{name}' has shape {list(output.shape)} for a batch of {rows} "
                        "rows; the model cannot be batched (remove dynamic_batching)"
                    )
            self._on_batch(rows, compute_ns)
            offset = 0
            for pending in batch:
                end = offset + pending.rows
                if not pending.future.done():
                    part = {name: output[offset:end] for name, output in outputs.items()}
                    pending.future.set_result(
                        BatchResult(part, started - pending.arrived_ns, compute_ns, rows)
                    )
                offset = end
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    if isinstance(exc, Exception):
                        pending.future.set_exception(exc)
                    else:
                        pending.future.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._schedule()
