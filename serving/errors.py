"""One error hierarchy for the whole serving path, each class carrying its gRPC status.

    ServingError (INTERNAL)
    ├── InvalidInput (INVALID_ARGUMENT)
    ├── ModelNotFound (NOT_FOUND)
    │   └── VersionNotFound (NOT_FOUND)
    ├── NotFound (NOT_FOUND): a dataset file, a training job
    ├── ModelNotReady (UNAVAILABLE)
    ├── BackendUnavailable (UNAVAILABLE)
    ├── ResourceExhausted (RESOURCE_EXHAUSTED)
    ├── Unauthenticated (UNAUTHENTICATED): a missing or wrong bearer token
    ├── PermissionDenied (PERMISSION_DENIED): a token without the scope a call needs
    ├── Unsupported (UNIMPLEMENTED)
    ├── RepositoryError (FAILED_PRECONDITION)
    ├── RuntimeUnavailable (FAILED_PRECONDITION): a runtime this version does not offer
    ├── SignatureChanged (FAILED_PRECONDITION): training would change a served signature
    └── UpstreamError (the upstream's own code)

The mapping to a gRPC status happens in one place, `serving.rpc.interceptor`. The message of a
`ServingError` is written for the client; any other exception is logged and answered as
INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio

import grpc

__all__ = [
    "BackendUnavailable",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "NotFound",
    "PermissionDenied",
    "RepositoryError",
    "ResourceExhausted",
    "RuntimeUnavailable",
    "ServingError",
    "SignatureChanged",
    "Unauthenticated",
    "Unsupported",
    "UpstreamError",
    "VersionNotFound",
    "code_of",
    "public_reason",
]


class ServingError(Exception):
    """Base class: an error whose message is safe and useful to send to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class VersionNotFound(ModelNotFound):
    pass


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class BackendUnavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unsupported(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class RepositoryError(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class RuntimeUnavailable(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class SignatureChanged(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UpstreamError(ServingError):
    """An upstream service answered with an error: its code and details pass through."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception ends a call with (a cancelled call's is CANCELLED; anything
    not a ServingError is INTERNAL). `serving.rpc.interceptor.status_of` adds the message."""
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def public_reason(exc: BaseException, fallback: str) -> str:
    """What a client may read about `exc`, e.g. as a model's reason for not loading: a
    ServingError's message (written for the client), else `fallback`, a short phrase saying
    what failed. Any other exception's text (a framework's internals, a server path) is for
    the log, which the caller writes with the traceback."""
    return exc.message if isinstance(exc, ServingError) else fallback
