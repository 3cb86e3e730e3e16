"""The load generator: closed loop (N calls in flight) and open loop (a fixed arrival rate,
latency from the intended send time), spread over client processes.

    with ClientPool(processes=2) as pool:
        result = pool.closed_loop("127.0.0.1:8001", request, concurrency=8, duration_s=5)
        result.latency_ms()["p99"], result.throughput, result.errors, result.client_saturated

`closed_loop` and `open_loop` at module level do the same with a pool of their own. Client
processes are started once per pool and reused (each costs ~0.5 s of imports). They are fresh
interpreters (`python -m loadtest.client`), not forks, because gRPC does not survive a fork of
a process that holds channels; and not multiprocessing's spawn, which re-imports the caller's
main script. `processes=0` runs the load in the calling process (threads only).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from google.protobuf.message import Message

from loadtest.checks import Checker
from loadtest.result import LoadResult
from loadtest.worker import MODEL_INFER, ClientFailure, Share, ShareResult, run_share

__all__ = ["ClientFailure", "ClientPool", "closed_loop", "default_processes", "open_loop"]

# Slack between handing out the shares and starting them, so the processes start together.
_START_SLACK_S = 0.1


def default_processes() -> int:
    """Up to 4 client processes, never more than the cores."""
    return max(1, min(4, os.cpu_count() or 1))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class ClientPool:
    def __init__(self, processes: int | None = None) -> None:
        self.processes = default_processes() if processes is None else processes
        if self.processes < 0:
            raise ValueError("processes must be >= 0")
        self._workers: list[tuple[subprocess.Popen[bytes], Connection]] = []
        for _ in range(self.processes):
            ours, theirs = socket.socketpair()
            process = subprocess.Popen(
                [sys.executable, "-m", "loadtest.client", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
            )
            theirs.close()
            self._workers.append((process, Connection(ours.detach())))

    def closed_loop(
        self,
        target: str,
        request: bytes | Message,
        *,
        concurrency: int = 1,
        duration_s: float | None = None,
        requests: int | None = None,
        warmup_s: float = 0.5,
        checker: Checker | None = None,
        timeout_s: float = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        method: str = MODEL_INFER,
    ) -> LoadResult:
        """`concurrency` calls kept in flight, each answer starting the next call, for
        `duration_s` seconds or `requests` calls after `warmup_s` seconds of warm-up."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        base = self._base(
            target=target,
            request=request,
            mode="closed",
            duration_s=duration_s,
            requests=requests,
            warmup_s=warmup_s,
            checker=checker,
            timeout_s=timeout_s,
            metadata=metadata,
            method=method,
        )
        parts = max(1, min(self.processes, concurrency))
        counts = _split(requests, parts) if requests is not None else [0] * parts
        shares = [
            replace(base, concurrency=c, requests=n if requests is not None else None)
            for c, n in zip(_split(concurrency, parts), counts, strict=True)
        ]
        return LoadResult.merge("closed", concurrency, 0.0, self._run(shares))

    def open_loop(
        self,
        target: str,
        request: bytes | Message,
        *,
        rate: float,
        duration_s: float | None = None,
        requests: int | None = None,
        warmup_s: float = 0.5,
        checker: Checker | None = None,
        timeout_s: float = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
        method: str = MODEL_INFER,
    ) -> LoadResult:
        """Calls sent at `rate` per second whatever is in flight; each latency runs from the
        call's intended send time, so time a stalled server or a late client adds counts."""
        if not rate > 0:
            raise ValueError("rate must be > 0")
        base = self._base(
            target=target,
            request=request,
            mode="open",
            duration_s=duration_s,
            requests=requests,
            warmup_s=warmup_s,
            checker=checker,
            timeout_s=timeout_s,
            metadata=metadata,
            method=method,
        )
        parts = max(1, self.processes)
        if requests is not None:
            parts = max(1, min(parts, requests))
        counts = _split(requests, parts) if requests is not None else [0] * parts
        # Process i sends at times i/rate + k*parts/rate: together, exactly `rate`.
        shares = [
            replace(
                base,
                rate=rate / parts,
                offset_s=i / rate,
                requests=counts[i] if requests is not None else None,
            )
            for i in range(parts)
        ]
        return LoadResult.merge("open", 0, rate, self._run(shares))

    def _base(
        self,
        *,
        target: str,
        request: bytes | Message,
        mode: str,
        duration_s: float | None,
        requests: int | None,
        warmup_s: float,
        checker: Checker | None,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]],
        method: str,
    ) -> Share:
        if (duration_s is None) == (requests is None):
            raise ValueError("give exactly one of duration_s and requests")
        if duration_s is not None and not duration_s > 0:
            raise ValueError("duration_s must be > 0")
        if requests is not None and requests < 1:
            raise ValueError("requests must be >= 1")
        if warmup_s < 0:
            raise ValueError("warmup_s must be >= 0")
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        return Share(
            address=target,
            request=payload,
            mode="closed" if mode == "closed" else "open",
            duration_s=duration_s,
            requests=requests,
            warmup_s=warmup_s,
            timeout_s=timeout_s,
            checker=checker,
            metadata=tuple(metadata),
            method=method,
        )

    def _run(self, shares: list[Share]) -> list[ShareResult]:
        start_at = time.time() + _START_SLACK_S
        shares = [replace(share, start_at=start_at) for share in shares]
        if not self._workers:
            return [run_share(share) for share in shares]  # processes=0: one share
        used = self._workers[: len(shares)]
        for (_, conn), share in zip(used, shares, strict=True):
            conn.send(share)
        results: list[ShareResult] = []
        for process, conn in used:
            try:
                answer: Any = conn.recv()
            except (EOFError, OSError):
                raise ClientFailure(f"client process {process.pid} died") from None
            if isinstance(answer, ClientFailure):
                raise answer
            results.append(answer)
        return results

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError):  # already gone
                conn.send(None)
            conn.close()
        for process, _ in self._workers:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._workers = []

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def closed_loop(
    target: str, request: bytes | Message, *, processes: int | None = None, **options: Any
) -> LoadResult:
    """`ClientPool.closed_loop` on a pool of its own (see there for the options)."""
    with ClientPool(processes) as pool:
        return pool.closed_loop(target, request, **options)


def open_loop(
    target: str,
    request: bytes | Message,
    *,
    rate: float,
    processes: int | None = None,
    **options: Any,
) -> LoadResult:
    """`ClientPool.open_loop` on a pool of its own (see there for the options)."""
    with ClientPool(processes) as pool:
        return pool.open_loop(target, request, rate=rate, **options)
