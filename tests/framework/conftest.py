"""Session fixtures of the framework tier: every backend's trained versions (trained once,
whichever module asks first) and the event loop their gRPC services run on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.framework.backends import Versions
from tests.integration.conftest import AioThread


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return Versions(tmp_path_factory)


@pytest.fixture(scope="session")
def aio() -> Iterator[AioThread]:
    thread = AioThread()
    yield thread
    thread.close()
