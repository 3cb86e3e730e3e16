"""Fixtures shared by the test tiers.

Every grpc.aio server in a test session runs on one event loop in a background thread
(`aio`); tests drive them with ordinary synchronous gRPC clients, so no async test plugin
is needed and a test reads top to bottom.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from serving.app.server import Service, create_server
from serving.app.settings import ServiceSettings
from serving.backend import Backend
from serving.backend.fake import AffineBackend
from serving.engine.repository import ModelRepository
from serving.training.seed import seed_repository

T = TypeVar("T")

# Seconds a test waits on anything the servers do; far above what a healthy run needs.
WAIT_S = 30.0


class AioThread:
    """An event loop running in a daemon thread, for the servers under test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="aio-servers", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedules `coro` on the loop and returns at once."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        return self.submit(coro).result(timeout)

    def start_service(
        self, repository: Path, backend: Backend, *, trains: bool = True, **settings: Any
    ) -> Service:
        """A started framework service on a free port; the caller stops it."""
        service = self.run(
            create_server(
                ServiceSettings(model_repository=repository, port=0, **settings),
                backend,
                trains=trains,
            )
        )
        self.run(service.start())
        return service

    @contextmanager
    def service(
        self, repository: Path, backend: Backend, *, trains: bool = True, **settings: Any
    ) -> Iterator[Service]:
        """A started framework service on a free port, stopped on exit."""
        service = self.start_service(repository, backend, trains=trains, **settings)
        try:
            yield service
        finally:
            self.run(service.stop(grace=0.5))

    @contextmanager
    def gateway(self, **settings: Any) -> Iterator[Gateway]:
        """A started gateway on a free port, stopped on exit."""
        gateway = self.run(create_gateway(GatewaySettings(port=0, **settings)))
        self.run(gateway.start())
        try:
            yield gateway
        finally:
            self.run(gateway.stop(grace=0.5))

    def close(self) -> None:
        self.run(_cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


@pytest.fixture(scope="session")
def aio() -> Iterator[AioThread]:
    thread = AioThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def seeded_repository(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """Makes a fresh repository holding `house_price` version 1 (1800 sq ft -> 360)."""

    def make() -> Path:
        path = tmp_path_factory.mktemp("models")
        assert seed_repository(ModelRepository(path), AffineBackend())
        return path

    return make
