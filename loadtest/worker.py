"""One client process's share of a run.

Calls are gRPC futures with a completion callback, not a thread blocked per call: measured
on the 2-core VM against the echo server, futures cost the least client CPU per request
(~275-350 us against ~315-425 us for blocking threads and ~320-480 us for grpc.aio), and
the same mechanism serves both loops. In the closed loop each completion issues the next
call; in the open loop one sender thread issues calls on a fixed schedule whatever is in
flight, and latency runs from the *intended* send time, so a stalled server (or a client
running late) shows in the figures instead of silently thinning the load (no coordinated
omission).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from loadtest.checks import Checker
from loadtest.histogram import HIGHEST_US, Histogram, new_histogram

__all__ = ["MODEL_INFER", "ClientFailure", "Share", "ShareResult", "new_histogram", "run_share"]

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class ClientFailure(RuntimeError):
    """A client process failed (not a call: calls' failures are counted in the result)."""


def _us(seconds: float) -> int:
    return min(HIGHEST_US, max(1, round(seconds * 1e6)))


@dataclass(frozen=True)
class Share:
    """What one client process runs. Exactly one of `duration_s` and `requests` is set."""

    address: str
    request: bytes
    mode: Literal["closed", "open"]
    concurrency: int = 1  # closed loop: calls kept in flight
    rate: float = 0.0  # open loop: calls per second from this process
    offset_s: float = 0.0  # open loop: where this process's schedule starts
    duration_s: float | None = None
    requests: int | None = None
    warmup_s: float = 0.0  # calls (intended to be) sent before this are not recorded
    timeout_s: float = 30.0
    checker: Checker | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    method: str = MODEL_INFER
    start_at: float = 0.0  # time.time() at which every process starts, so they run together


@dataclass
class ShareResult:
    latency: bytes  # encoded loadtest.histogram, microseconds, correct answers only
    send_lag: bytes  # encoded loadtest.histogram: how late each call left against its intended time
    ok: int
    wrong: int
    wrong_example: str | None
    errors: dict[str, int]
    error_examples: dict[str, str]
    window_s: float  # the measured window
    cpu_s: float  # this process's CPU time (every thread, gRPC's included) over the run
    wall_s: float


@dataclass
class _State:
    latency: Histogram = field(default_factory=new_histogram)
    send_lag: Histogram = field(default_factory=new_histogram)
    ok: int = 0
    wrong: int = 0
    wrong_example: str | None = None
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    issued: int = 0  # measured calls issued (request-count mode)
    in_flight: int = 0
    sending_done: bool = False
    first_sent: float = math.inf
    last_done: float = -math.inf


class _Run:
    def __init__(self, share: Share, channel: grpc.Channel) -> None:
        self.share = share
        # No (de)serializers: the request goes out as the prebuilt bytes, answers come back
        # as bytes for the checker.
        self.call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(share.method)
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.state = _State()
        self.t0 = 0.0

    def ticket(self, at: float) -> bool | None:
        """For a call (intended to be) sent at `at`: None to stop sending, else whether it
        is measured. Called under the lock."""
        share, state = self.share, self.state
        if at < self.t0 + share.warmup_s:
            return False
        if share.duration_s is not None:
            return True if at < self.t0 + share.warmup_s + share.duration_s else None
        if state.issued >= (share.requests or 0):
            return None
        state.issued += 1
        return True

    def send(self, intended: float, measured: bool) -> None:
        with self.lock:
            self.state.in_flight += 1
        sent = time.perf_counter()
        future: Any = self.call.future(
            self.share.request, timeout=self.share.timeout_s, metadata=self.share.metadata
        )
        future.add_done_callback(lambda f: self.done(f, intended, sent, measured))

    def done(self, future: Any, intended: float, sent: float, measured: bool) -> None:
        now = time.perf_counter()
        code = future.code()
        verdict: str | None = None
        if code is grpc.StatusCode.OK and self.share.checker is not None:
            try:
                verdict = self.share.checker(future.result())
            except Exception as exc:  # a checker bug must not kill the callback thread
                verdict = f"checker failed: {type(exc).__name__}: {exc}"
        with self.lock:
            state = self.state
            if measured:
                state.first_sent = min(state.first_sent, sent)
                state.last_done = max(state.last_done, now)
                state.send_lag.record_value(_us(sent - intended))
                if code is not grpc.StatusCode.OK:
                    state.errors[code.name] += 1
                    state.error_examples.setdefault(code.name, future.details() or "")
                elif verdict is not None:
                    state.wrong += 1
                    state.wrong_example = state.wrong_example or verdict
                else:
                    state.ok += 1
                    state.latency.record_value(_us(now - intended))
            state.in_flight -= 1
            # Closed loop: this completion frees a slot, so the next call goes now.
            follow = self.ticket(now) if self.share.mode == "closed" else None
            if follow is None and state.in_flight == 0 and state.sending_done:
                self.finished.set()
        if follow is not None:
            self.send(time.perf_counter(), follow)

    def start_closed(self) -> None:
        for _ in range(self.share.concurrency):
            with self.lock:
                measured = self.ticket(time.perf_counter())
            if measured is None:
                break
            self.send(time.perf_counter(), measured)

    def start_open(self) -> None:
        share = self.share
        for k in range(2**62):
            intended = self.t0 + share.offset_s + k / share.rate
            with self.lock:
                measured = self.ticket(intended)
            if measured is None:
                return
            delay = intended - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send(intended, measured)

    def run(self) -> ShareResult:
        delay = self.share.start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        self.t0 = time.perf_counter()
        cpu0 = time.process_time()
        if self.share.mode == "closed":
            self.start_closed()
        else:
            self.start_open()
        with self.lock:
            self.state.sending_done = True
            if self.state.in_flight == 0:
                self.finished.set()
        self.finished.wait()
        wall = time.perf_counter() - self.t0
        cpu = time.process_time() - cpu0
        return self.result(cpu, wall)

    def result(self, cpu: float, wall: float) -> ShareResult:
        state = self.state
        if self.share.duration_s is not None:
            window = self.share.duration_s
        else:
            window = max(0.0, state.last_done - state.first_sent)
        return ShareResult(
            latency=state.latency.encode(),
            send_lag=state.send_lag.encode(),
            ok=state.ok,
            wrong=state.wrong,
            wrong_example=state.wrong_example,
            errors=dict(state.errors),
            error_examples=state.error_examples,
            window_s=window,
            cpu_s=cpu,
            wall_s=wall,
        )


def run_share(share: Share) -> ShareResult:
    """Runs `share` in this process (its own channel) and returns what it measured."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(share.address, options=options) as channel:
        # Connecting is not part of any call's latency. A target that does not come up is
        # still loaded: its calls fail, and are counted, as UNAVAILABLE.
        with contextlib.suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=min(10.0, share.timeout_s))
        return _Run(share, channel).run()
