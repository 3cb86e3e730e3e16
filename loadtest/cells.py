"""The matrix's vocabulary: a target (one row of the report), a cell (a target at a
concurrency), its outcome, and where a target's calls go."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import grpc

from loadtest.result import LoadResult
from loadtest.targets import KNOWN, Endpoints
from loadtest.worker import MODEL_INFER
from serving.pb import inference_pb2 as pb

__all__ = ["PATHS", "RUNTIMES", "Cell", "Outcome", "Target", "address_of", "call"]

# The runtimes measured per framework, as devtools/frameworks.json lists them.
RUNTIMES = {name: framework.runtimes for name, framework in KNOWN.items()}
PATHS = ("direct", "gateway")


@dataclass(frozen=True)
class Target:
    """What one row of the report loads: a model at a batch size on a device, served by a
    framework's runtime, reached directly or through the gateway (or the echo floor)."""

    model: str
    batch: int
    device: str
    framework: str  # a framework of devtools/frameworks.json, or "echo"
    runtime: str
    path: str  # "direct" or "gateway"

    @property
    def label(self) -> str:
        if self.framework == "echo":
            return "echo floor"
        return f"{self.framework}/{self.runtime} {self.path}"


@dataclass
class Cell:
    target: Target
    concurrency: int


@dataclass
class Outcome:
    cell: Cell
    # "ok", "not available", "failed", or "mismatch": a served model's target measured, whose
    # answer is not the reference's (another framework's version of the model, say).
    status: str
    reason: str = ""
    result: LoadResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.cell.target),
            "target": self.cell.target.label,
            "concurrency": self.cell.concurrency,
            "status": self.status,
            "reason": self.reason,
            "result": self.result.to_dict() if self.result else None,
        }


def address_of(target: Target, endpoints: Endpoints) -> str | None:
    if target.framework == "echo":
        return endpoints.echo
    if target.path == "gateway":
        return endpoints.gateway
    return endpoints.direct.get(target.framework)


def call(
    address: str, request: bytes, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
        return pb.ModelInferResponse.FromString(call(request, timeout=60, metadata=metadata))
