"""The twinserve gateway: one Open Inference Protocol endpoint in front of both frameworks."""

from gateway.routing import FRAMEWORK_HEADER, FRAMEWORK_PARAM, Router
from gateway.server import Gateway, create_server
from gateway.settings import GatewaySettings

__all__ = [
    "FRAMEWORK_HEADER",
    "FRAMEWORK_PARAM",
    "Gateway",
    "GatewaySettings",
    "Router",
    "create_server",
]
