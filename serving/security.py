"""TLS credentials for servers and channels, and bearer-token authentication of callers.

Both are opt-in. A server without a certificate listens in plaintext; with one it serves TLS,
and with a client CA as well it requires and verifies client certificates (mutual TLS). A
server without tokens lets every caller in; with tokens, each call must carry metadata
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from serving.errors import PermissionDenied, ServingError, Unauthenticated
from serving.pb import inference_pb2
from serving.pb.twinserve.v1 import training_pb2

__all__ = [
    "ADMIN_METHODS",
    "OPEN_SERVICES",
    "BearerTokenAuth",
    "BearerTokenClient",
    "Scope",
    "channel_credentials",
    "load_tokens",
    "required_scope",
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


class ServerSecuritySettings(Protocol):
    """The settings fields a server's TLS and token authentication come from (the services'
    and the gateway's settings both have them)."""

    tls_cert_file: Path | None
    tls_key_file: Path | None
    tls_client_ca_file: Path | None
    auth_tokens: list[SecretStr]
    auth_tokens_file: Path | None
    infer_auth_tokens: list[SecretStr]
    infer_auth_tokens_file: Path | None


PLAINTEXT_TOKENS = (
    "bearer tokens are required but the port serves plaintext: tokens travel in clear "
    "(set tls_cert_file and tls_key_file, or keep the port on a trusted network)"
)


def server_security(
    settings: ServerSecuritySettings,
) -> tuple[grpc.ServerCredentials | None, list[grpc.aio.ServerInterceptor]]:
    """(TLS credentials or None, authentication interceptors) for a server's settings.
    Called once per server start, so its plaintext warning appears once."""
    credentials = server_credentials(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )
    interceptors = token_auth(
        [token.get_secret_value() for token in settings.auth_tokens],
        settings.auth_tokens_file,
        [token.get_secret_value() for token in settings.infer_auth_tokens],
        settings.infer_auth_tokens_file,
    )
    if interceptors and credentials is None:
        logger.warning(PLAINTEXT_TOKENS)
    return credentials, interceptors


# ---- the server side: a grpc.aio interceptor ----

if TYPE_CHECKING:  # generic only in the type stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


def _refusal(handler: Handler, error: ServingError) -> Handler:
    """A handler of the same kind as `handler` that answers `error`'s status."""

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
        values = [v for k, v in metadata or () if k == "authorization" and isinstance(v, str)]
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
