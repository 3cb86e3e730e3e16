"""Request messages that do not parse answer INVALID_ARGUMENT. grpc.aio answers a
deserializer's exception with UNKNOWN (found by tests/integration/test_fuzz.py), so the
interceptor gives each handler a tolerant deserializer that hands on a marker instead, and
raises InvalidInput where the handler would have received it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from serving.errors import InvalidInput

__all__ = ["checked", "parsed", "tolerant"]


class _Undecodable:
    """Stands in for a request message that did not parse."""


_UNDECODABLE = _Undecodable()


def _malformed() -> InvalidInput:
    return InvalidInput("the request message could not be parsed")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering the marker instead of raising."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    return deserialize


def parsed(request: Any) -> Any:
    """The request itself, or InvalidInput if it did not parse."""
    if request is _UNDECODABLE:
        raise _malformed()
    return request


async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream's requests, ending in InvalidInput at the first that did not parse."""
    async for request in requests:
        if request is _UNDECODABLE:
            raise _malformed()
        yield request
