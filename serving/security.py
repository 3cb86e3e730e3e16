"""TLS credentials for servers and channels, and bearer-token authentication of callers.

Both are opt-in. A server without a certificate listens in plaintext; with one it serves TLS,
and with a client CA as well it requires and verifies client certificates (mutual TLS). A
server without tokens lets every caller in; with tokens, each call must carry metadata
`authorization: Bearer <token>` naming one of them. Health and reflection stay open, so
probes and tooling need no secret.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from serving.errors import Unauthenticated

__all__ = [
    "OPEN_SERVICES",
    "BearerTokenAuth",
    "BearerTokenClient",
    "channel_credentials",
    "load_tokens",
    "server_credentials",
    "server_security",
    "token_auth",
    "transport_name",
]

logger = logging.getLogger(__name__)

# Services any caller may use without a token: probes and tooling.
OPEN_SERVICES = (
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
    "grpc.reflection.v1.ServerReflection",
)

MISSING_TOKEN = "missing bearer token (send metadata 'authorization: Bearer <token>')"
INVALID_TOKEN = "invalid bearer token"


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def server_credentials(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS credentials for a server, or None for plaintext. With `client_ca_file`, clients
    must present a certificate signed by that CA."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise ValueError(
                "a client CA (tls_client_ca_file) needs tls_cert_file and tls_key_file"
            )
        return None
    if cert_file is None or key_file is None:
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    return grpc.ssl_server_credentials(
        [(key_file.read_bytes(), cert_file.read_bytes())],
        root_certificates=_read(client_ca_file),
        require_client_auth=client_ca_file is not None,
    )


def transport_name(cert_file: Path | None, client_ca_file: Path | None) -> str:
    """How a server with these settings listens, for its start-up log line."""
    if cert_file is None:
        return "plaintext"
    return "mutual TLS" if client_ca_file is not None else "TLS"


def channel_credentials(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    token: str | None = None,
) -> grpc.ChannelCredentials:
    """TLS credentials for a channel: servers verified against `ca_file` (the system roots
    when None), an optional client certificate, and an optional bearer token sent on every
    call (gRPC sends call credentials over TLS only)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both its certificate and its key file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file),
        certificate_chain=_read(cert_file),
    )
    if not token:
        return credentials
    return grpc.composite_channel_credentials(
        credentials, grpc.access_token_call_credentials(token)
    )


def load_tokens(tokens: Iterable[str], file: Path | None = None) -> list[str]:
    """The tokens given directly plus those in `file` (one a line; blank lines and lines
    starting with '#' are skipped)."""
    found = [token.strip() for token in tokens if token.strip()]
    if file is not None:
        lines = (line.strip() for line in file.read_text().splitlines())
        found.extend(line for line in lines if line and not line.startswith("#"))
    return found


def token_auth(tokens: Iterable[str], file: Path | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server needs for these tokens: none when there are none."""
    found = load_tokens(tokens, file)
    if not found:
        return []
    logger.info("bearer-token authentication on (%d token(s))", len(found))
    return [BearerTokenAuth(found)]


class ServerSecuritySettings(Protocol):
    """The settings fields a server's TLS and token authentication come from (the services'
    and the gateway's settings both have them)."""

    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_client_ca_file: Path | None
    auth_tokens: list[SecretStr]
    auth_tokens_file: Path | None


def server_security(
    settings: ServerSecuritySettings,
) -> tuple[grpc.ServerCredentials | None, list[grpc.aio.ServerInterceptor]]:
    """(TLS credentials or None, authentication interceptors) for a server's settings."""
    credentials = server_credentials(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    tokens = [token.get_secret_value() for token in settings.auth_tokens]
    return credentials, token_auth(tokens, settings.auth_tokens_file)


# ---- the server side: a grpc.aio interceptor ----

if TYPE_CHECKING:  # generic only in the type stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


def _refusal(handler: Handler, message: str) -> Handler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    error = Unauthenticated(message)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.code, error.message)

    async def refuse_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(error.code, error.message)
        yield  # never reached: makes this an async generator, as streaming handlers are

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[handler.request_streaming, handler.response_streaming]
    return make(
        refuse_stream if handler.response_streaming else refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only if its `authorization` metadata is `Bearer <token>` for one
    of `tokens`; others are answered UNAUTHENTICATED before any servicer code runs. Tokens
    are compared in constant time, against every configured token."""

    def __init__(
        self, tokens: Iterable[str], *, open_services: Iterable[str] = OPEN_SERVICES
    ) -> None:
        self._tokens = tuple(token.encode() for token in tokens)
        if not self._tokens:
            raise ValueError("token authentication needs at least one token")
        self._open = tuple(f"/{service}/" for service in open_services)

    def refusal(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """Why a call with this metadata is refused, or None if it may go through."""
        values = [v for k, v in metadata or () if k == "authorization" and isinstance(v, str)]
        if not values:
            return MISSING_TOKEN
        scheme, _, given = values[0].partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return MISSING_TOKEN
        presented = given.strip().encode()
        matched = False
        for token in self._tokens:  # no early exit: the time does not depend on which matched
            matched |= hmac.compare_digest(token, presented)
        return None if matched else INVALID_TOKEN

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self._open):
            return handler
        reason = self.refusal(handler_call_details.invocation_metadata)
        if reason is None:
            return handler
        logger.debug("refused %s: %s", method, reason)
        return _refusal(handler, reason)


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
        self._header = ("authorization", f"Bearer {token}")

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
