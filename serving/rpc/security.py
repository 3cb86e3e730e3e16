"""TLS credentials for servers and channels, and a server's security from its settings.

TLS is opt-in. A server without a certificate listens in plaintext; with one it serves TLS,
and with a client CA as well it requires and verifies client certificates (mutual TLS).
Bearer tokens and their scopes are `serving.rpc.auth`'s; `server_security` puts both together
and warns when tokens would travel in clear.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import grpc
from pydantic import SecretStr

from serving.rpc.auth import (
    ADMIN_METHODS,
    OPEN_SERVICES,
    BearerTokenAuth,
    BearerTokenClient,
    Scope,
    load_tokens,
    token_auth,
)

# The token names are re-exported: callers set up security from this one module.
__all__ = [
    "ADMIN_METHODS",
    "OPEN_SERVICES",
    "PLAINTEXT_TOKENS",
    "BearerTokenAuth",
    "BearerTokenClient",
    "Scope",
    "channel_credentials",
    "load_tokens",
    "server_credentials",
    "server_security",
    "transport_name",
]

logger = logging.getLogger(__name__)


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
