"""Settings of the gateway, parsed once in `__main__`. Env prefix `TWINSERVE_GATEWAY_`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["FRAMEWORKS", "GatewaySettings"]

FRAMEWORKS = ("tensorflow", "pytorch")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TWINSERVE_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    port_file: Path | None = None
    # Addresses of the framework services (host:port); an empty one is not routed to.
    tensorflow_url: str = ""
    pytorch_url: str = ""
    # The framework used when a request names none, overall and per model
    # (e.g. TWINSERVE_GATEWAY_MODEL_FRAMEWORKS='{"house_price": "pytorch"}').
    default_framework: Literal["tensorflow", "pytorch"] = "tensorflow"
    model_frameworks: dict[str, Literal["tensorflow", "pytorch"]] = {}
    # Upper bound on every upstream call; a client's shorter deadline wins.
    upstream_timeout_s: float = Field(default=30.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    grace_period_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    def urls(self) -> dict[str, str]:
        return {
            name: url
            for name, url in (("tensorflow", self.tensorflow_url), ("pytorch", self.pytorch_url))
            if url
        }
