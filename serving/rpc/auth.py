"""Bearer-token authentication of callers, with scopes; and the client side, a token on
every call of a channel.

A server without tokens lets every caller in; with tokens, each call must carry metadata
`authorization: Bearer <token>` naming one of them. Health and reflection stay open, so
probes and tooling need no secret.

Tokens have a scope. An `infer` token may use everything that reads or infers; the calls
that change what is served (`ADMIN_METHODS`: training, job cancel, repository load and
unload) need an `admin` token, which may do everything. The wrong scope is answered
PERMISSION_DENIED (a missing or unknown token UNAUTHENTICATED), before any servicer runs.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from serving.errors import PermissionDenied, ServingError, Unauthenticated
from serving.pb import inference_pb2
from serving.pb.twinserve.v1 import training_pb2
from serving.protocol.names import AUTHORIZATION_HEADER
from serving.rpc.interceptor import refusing

__all__ = [
    "ADMIN_METHODS",
    "INVALID_TOKEN",
    "MISSING_TOKEN",
    "OPEN_SERVICES",
    "BearerTokenAuth",
    "BearerTokenClient",
    "Scope",
    "load_tokens",
    "required_scope",
    "token_auth",
]

logger = logging.getLogger(__name__)

OPEN_SERVICES = (
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
    "grpc.reflection.v1.ServerReflection",
)

MISSING_TOKEN = "missing bearer token (send metadata 'authorization: Bearer <token>')"
INVALID_TOKEN = "invalid bearer token"


class Scope(enum.Enum):
    """What a token may do; `admin` includes `infer`."""

    INFER = "infer"
    ADMIN = "admin"


def _method(descriptor: Any, service: str, name: str) -> str:
    return f"/{descriptor.services_by_name[service].full_name}/{name}"


# The calls that change which models are served, or a job that will: Train serves the
# version it trains, CancelJob stops another caller's job. Only admin tokens may make them,
# on a service and on the gateway alike (the gateway serves the same method names).
ADMIN_METHODS = frozenset(
    {
        _method(inference_pb2.DESCRIPTOR, "GRPCInferenceService", "RepositoryModelLoad"),
        _method(inference_pb2.DESCRIPTOR, "GRPCInferenceService", "RepositoryModelUnload"),
        _method(training_pb2.DESCRIPTOR, "TrainingService", "Train"),
        _method(training_pb2.DESCRIPTOR, "TrainingService", "CancelJob"),
    }
)


def required_scope(method: str) -> Scope:
    return Scope.ADMIN if method in ADMIN_METHODS else Scope.INFER


def load_tokens(tokens: Iterable[str], file: Path | None = None) -> list[str]:
    """The tokens given directly plus those in `file` (one a line; blank lines and lines
    starting with '#' are skipped)."""
    found = [token.strip() for token in tokens if token.strip()]
    if file is not None:
        lines = (line.strip() for line in file.read_text().splitlines())
        found.extend(line for line in lines if line and not line.startswith("#"))
    return found


def token_auth(
    admin: Iterable[str],
    admin_file: Path | None = None,
    infer: Iterable[str] = (),
    infer_file: Path | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server needs for these tokens: none when there are none."""
    admin_tokens = load_tokens(admin, admin_file)
    infer_tokens = load_tokens(infer, infer_file)
    if not admin_tokens and not infer_tokens:
        return []
    logger.info(
        "bearer-token authentication on (%d admin, %d infer token(s))",
        len(admin_tokens),
        len(infer_tokens),
    )
    if not admin_tokens:
        logger.info("no admin token: training, job cancel and model load/unload are refused")
    return [BearerTokenAuth(admin_tokens, infer_tokens)]


# ---- the server side: a grpc.aio interceptor ----

if TYPE_CHECKING:  # generic only in the type stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only if its `authorization` metadata is `Bearer <token>` for one
    of the tokens, with the scope the method needs (`admin` tokens may call everything,
    `infer` tokens all but `ADMIN_METHODS`); others are answered UNAUTHENTICATED (no or an
    unknown token) or PERMISSION_DENIED (too narrow a scope) before any servicer code runs.
    Tokens are compared in constant time, against every configured token."""

    def __init__(
        self,
        admin: Iterable[str],
        infer: Iterable[str] = (),
        *,
        open_services: Iterable[str] = OPEN_SERVICES,
    ) -> None:
        admin_tokens = {token.encode() for token in admin}
        # A token listed in both keeps the wider scope.
        self._tokens = tuple(
            [(token, Scope.ADMIN) for token in sorted(admin_tokens)]
            + [
                (token.encode(), Scope.INFER)
                for token in infer
                if token.encode() not in admin_tokens
            ]
        )
        if not self._tokens:
            raise ValueError("token authentication needs at least one token")
        self._open = tuple(f"/{service}/" for service in open_services)

    def scope(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Scope:
        """The scope of the token in this metadata; Unauthenticated without a known one."""
        values = [v for k, v in metadata or () if k == AUTHORIZATION_HEADER and isinstance(v, str)]
        if not values:
            raise Unauthenticated(MISSING_TOKEN)
        scheme, _, given = values[0].partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthenticated(MISSING_TOKEN)
        presented = given.strip().encode()
        found: Scope | None = None
        for token, scope in self._tokens:  # no early exit: the time does not tell which matched
            if hmac.compare_digest(token, presented):
                found = scope
        if found is None:
            raise Unauthenticated(INVALID_TOKEN)
        return found

    def refusal(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> ServingError | None:
        """Why a call of `method` with this metadata is refused, or None if it may go through."""
        try:
            scope = self.scope(metadata)
        except Unauthenticated as exc:
            return exc
        needed = required_scope(method)
        if needed is Scope.ADMIN and scope is not Scope.ADMIN:
            name = method.rpartition("/")[2]
            return PermissionDenied(
                f"{name} needs a token with the '{needed.value}' scope; "
                f"this token has the '{scope.value}' scope"
            )
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._open):
            return handler
        reason = self.refusal(method, handler_call_details.invocation_metadata)
        if reason is None:
            return handler
        logger.debug("refused %s: %s", method, reason.message)
        return refusing(handler, reason.code, reason.message)


# ---- the client side: a token on every call of a (synchronous) channel ----


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class BearerTokenClient(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call, over TLS or plaintext
    (`grpc.intercept_channel(channel, BearerTokenClient(token))`)."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION_HEADER, f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)
