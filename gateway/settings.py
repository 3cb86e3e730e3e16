"""Settings of the gateway, parsed once in `__main__`. Env prefix `TWINSERVE_GATEWAY_`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings", "known_frameworks"]

# A framework's name as clients send it (parameter `framework`, metadata `x-framework`).
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def known_frameworks(names: Iterable[str]) -> str:
    """The configured set, as every error about an unknown framework names it."""
    return ", ".join(f"'{name}'" for name in sorted(names)) or "none"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWINSERVE_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    port_file: Path | None = None
    # The frameworks this gateway routes to: name (the value clients send as `framework`)
    # -> addresses of its service, in the format of the replicas below, e.g.
    # TWINSERVE_GATEWAY_FRAMEWORKS='{"tensorflow": "h1:8500,h2:8500", "onnx": "h3:8600"}'.
    # An empty address is not routed to.
    frameworks: dict[str, str] = {}
    # The settings of the first two frameworks, kept so that existing deployments work:
    # folded into `frameworks` under the names "tensorflow" and "pytorch".
    tensorflow_url: str = ""
    pytorch_url: str = ""
    # The framework used when a request names none, overall ("": the first configured) and
    # per model (e.g. TWINSERVE_GATEWAY_MODEL_FRAMEWORKS='{"house_price": "pytorch"}'); both
    # must name configured frameworks.
    default_framework: str = ""
    model_frameworks: dict[str, str] = {}
    # Routing policies per model (default framework, weighted split, shadow) in a JSON file
    # (format: gateway/policy.py), over model_frameworks; checked every routing_poll_s seconds
    # and re-read when it changes; a bad file is logged and the last good policy stays.
    routing_file: Path | None = None
    routing_poll_s: float = Field(default=1.0, gt=0)
    # Shadow calls in flight at most (more are dropped and counted), and their deadline.
    shadow_max_in_flight: int = Field(default=16, ge=0)
    shadow_timeout_s: float = Field(default=10.0, gt=0)
    # Upper bound on every upstream call; a client's shorter deadline wins.
    upstream_timeout_s: float = Field(default=30.0, gt=0)
    # Seconds between health checks of every replica (grpc.health.v1) and lookups of
    # dns:/// URLs.
    health_interval_s: float = Field(default=2.0, gt=0)
    # Replicas: a URL may list several host:port, comma-separated, and/or name
    # dns:///name:port, whose addresses (a Kubernetes headless Service) are all replicas.
    # Calls in flight to one replica at most; past that on every healthy replica, a call is
    # refused at once with RESOURCE_EXHAUSTED rather than queued.
    max_inflight_per_replica: int = Field(default=64, ge=1)
    # Retries (idempotent calls, on UNAVAILABLE, to another replica) may add this fraction
    # on top of the last 10 s of requests, plus retry_budget_min_per_s a second.
    retry_budget_ratio: float = Field(default=0.2, ge=0)
    retry_budget_min_per_s: float = Field(default=10.0, ge=0)
    # Retries a new gateway may spend before there are requests to take a ratio of (spent
    # once, when the rest of the budget is), so its first second does not run dry.
    retry_budget_initial: float = Field(default=100.0, ge=0)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Calls handled at once (health and reflection aside); more are refused with
    # RESOURCE_EXHAUSTED. 0: no bound.
    max_concurrent_rpcs: int = Field(default=1024, ge=0)
    # Concurrent streams one client connection may carry (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams_per_connection: int = Field(default=256, ge=1)
    # Prometheus metrics over HTTP (/metrics) on this port of `host`; None: not served,
    # 0: a free port. `make run` uses 8002 (Triton's metrics port).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # OpenTelemetry traces (needs the `otel` extra), with the trace context sent on to the
    # services; exported as OTLP where the standard OTEL_EXPORTER_OTLP_* variables say.
    tracing: bool = False
    grace_period_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    # TLS towards clients: with a certificate and its key the port serves TLS; with a client
    # CA as well, clients must present a certificate that CA signed.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Bearer tokens of the `admin` scope clients must send as `authorization: Bearer <token>`
    # (health and reflection stay open): TWINSERVE_GATEWAY_AUTH_TOKENS='["token-1", "token-2"]'
    # and/or a file of one token a line. None configured (nor infer ones): no authentication.
    auth_tokens: list[SecretStr] = []
    auth_tokens_file: Path | None = None
    # Tokens of the `infer` scope (the tokens above are `admin`): they may infer and read
    # (metadata, statistics, jobs) but not Train, CancelJob or RepositoryModelLoad/Unload,
    # which answer them PERMISSION_DENIED. TWINSERVE_GATEWAY_INFER_AUTH_TOKENS and/or a file.
    infer_auth_tokens: list[SecretStr] = []
    infer_auth_tokens_file: Path | None = None
    # TLS towards the services, on when any upstream_tls_* file is set: the CA that signed
    # their certificates (None: the system roots), this gateway's client certificate and key
    # for services that require one (mutual TLS), and the name their certificates carry when
    # it differs from the host in the URL.
    upstream_tls_ca_file: Path | None = None
    upstream_tls_cert_file: Path | None = None
    upstream_tls_key_file: Path | None = None
    upstream_tls_server_name: str = ""
    # The bearer token sent to services that require one (needs upstream TLS).
    upstream_auth_token: SecretStr | None = None

    def upstream_tls(self) -> bool:
        return any(
            path is not None
            for path in (
                self.upstream_tls_ca_file,
                self.upstream_tls_cert_file,
                self.upstream_tls_key_file,
            )
        )

    def urls(self) -> dict[str, str]:
        """Framework name -> addresses, of every framework with a service (the legacy
        settings first, so they keep their order and stay the default's first choice)."""
        merged = {name: url for name, url in self._legacy_urls().items() if url} | self.frameworks
        return {name: url for name, url in merged.items() if url}

    def default(self) -> str:
        """The framework of a request that names none and whose model has no policy."""
        return self.default_framework or next(iter(self.urls()), "")

    def _legacy_urls(self) -> dict[str, str]:
        # The per-framework settings from before `frameworks`, under the names they meant.
        return {"tensorflow": self.tensorflow_url, "pytorch": self.pytorch_url}

    @model_validator(mode="after")
    def _check_frameworks(self) -> Self:
        legacy = self._legacy_urls()
        for name, url in self.frameworks.items():
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"frameworks: '{name}' is not a framework name (lower-case letters, "
                    "digits, '_', '.', '-', at most 64)"
                )
            if legacy.get(name) and url and legacy[name] != url:
                raise ValueError(
                    f"frameworks: '{name}' is given as {url!r} and as {name}_url "
                    f"{legacy[name]!r}: give it once"
                )
        configured = self.urls()
        if not configured:
            return self  # create_server says the gateway needs a backend
        asked = [("default_framework", self.default_framework)] + [
            (f"model_frameworks['{model}']", name) for model, name in self.model_frameworks.items()
        ]
        for where, name in asked:
            if name and name not in configured:
                raise ValueError(
                    f"{where}: unknown framework '{name}' "
                    f"(configured: {known_frameworks(configured)})"
                )
        return self
