"""The comparison matrix: every model x batch x device x framework x runtime x path x
concurrency, as cells; each target is checked with one call before it is loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import numpy as np

from loadtest.checks import OutputClose, output_array
from loadtest.generator import ClientPool
from loadtest.result import LoadResult
from loadtest.targets import KNOWN, Endpoints
from loadtest.worker import MODEL_INFER
from loadtest.workloads import Workload
from serving.pb import inference_pb2 as pb
from serving.protocol.names import FRAMEWORK_PARAM, RUNTIME_PARAM

__all__ = ["RUNTIMES", "Cell", "Outcome", "Target", "run_target", "targets_for"]

# The runtimes measured per framework, as devtools/frameworks.json lists them.
RUNTIMES = {name: framework.runtimes for name, framework in KNOWN.items()}
PATHS = ("direct", "gateway")
# Runtimes' exports agree with native within 1e-3 of the output's magnitude (checked at
# training time); twice that leaves room for float32 reorderings on another device.
_REFERENCE_TOLERANCE = 2e-3


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
    status: str  # "ok", "not available", "failed"
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


def targets_for(
    workloads: Iterable[Workload], device: str, frameworks: Iterable[str], *, echo: bool
) -> list[Target]:
    targets = []
    for w in workloads:
        if echo and w.model == "house_price" and w.batch == 1:
            targets.append(Target(w.model, w.batch, device, "echo", "-", "direct"))
        for framework in frameworks:
            for runtime in RUNTIMES[framework]:
                for path in PATHS:
                    targets.append(Target(w.model, w.batch, device, framework, runtime, path))
    return targets


def address_of(target: Target, endpoints: Endpoints) -> str | None:
    if target.framework == "echo":
        return endpoints.echo
    if target.path == "gateway":
        return endpoints.gateway
    return endpoints.direct.get(target.framework)


def _call(
    address: str, request: bytes, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
        return pb.ModelInferResponse.FromString(call(request, timeout=60, metadata=metadata))


class References:
    """Expected answers per (model, batch, framework): known in advance (house_price) or the
    native runtime's first answer, which every other runtime and path must then match."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int, str], OutputClose] = {}

    def checker(self, target: Target, workload: Workload, endpoints: Endpoints) -> OutputClose:
        key = (target.model, target.batch, target.framework)
        if key not in self._answers:
            output = workload.spec.output_name
            known = workload.known_answer
            if known is not None:
                self._answers[key] = OutputClose.of(output, *known)
            else:
                native = Target(*key[:2], target.device, target.framework, "native", "direct")
                address = address_of(native, endpoints) or endpoints.gateway or ""
                answer = output_array(
                    _call(address, workload.request(target.framework, ""), endpoints.metadata),
                    output,
                )
                atol = _REFERENCE_TOLERANCE * max(1.0, float(np.max(np.abs(answer))))
                self._answers[key] = OutputClose.of(output, answer, atol)
        return self._answers[key]


def _other_target(target: Target, response: pb.ModelInferResponse) -> str | None:
    """Who answered, where the answer says it (the services and the gateway name their
    `framework` and `runtime`), if that is not `target`: a cell that measured another
    framework or runtime than its row names would be a wrong row, however right the value."""
    if target.framework == "echo":
        return None
    wanted = {FRAMEWORK_PARAM: target.framework, RUNTIME_PARAM: target.runtime}
    said = {
        key: response.parameters[key].string_param for key in wanted if key in response.parameters
    }
    if all(said[key] == wanted[key] for key in said):
        return None
    answered = "/".join(said.get(key, "?") for key in wanted)
    return f"answered by {answered}, not {target.framework}/{target.runtime}"


def run_target(
    target: Target,
    concurrencies: Iterable[int],
    endpoints: Endpoints,
    references: References,
    pool: ClientPool,
    *,
    duration_s: float,
    warmup_s: float,
    on_cell: Callable[[Outcome], None],
) -> None:
    """Checks `target` with one call, then loads it at each concurrency; reports each cell."""
    cells = [Cell(target, c) for c in concurrencies]
    workload = Workload(target.model, target.batch)
    address = address_of(target, endpoints)
    framework = target.framework if target.framework != "echo" else ""
    runtime = target.runtime if target.framework != "echo" else ""
    request = workload.request(framework if target.path == "gateway" else None, runtime)
    try:
        if address is None:
            raise LookupError(f"no {target.path} endpoint for {target.framework} was given")
        checker = references.checker(target, workload, endpoints)
        answer = _call(address, request, endpoints.metadata)
        verdict = checker(answer.SerializeToString()) or _other_target(target, answer)
        if verdict is not None:
            raise ValueError(f"wrong answer: {verdict}")
    except grpc.RpcError as exc:
        for cell in cells:
            on_cell(Outcome(cell, "not available", f"{exc.code().name}: {exc.details()}"))
        return
    except (LookupError, ValueError) as exc:
        for cell in cells:
            on_cell(Outcome(cell, "not available", str(exc)))
        return
    for cell in cells:
        result = pool.closed_loop(
            address,
            request,
            concurrency=cell.concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            checker=checker,
            metadata=endpoints.metadata,
        )
        status = "ok" if result.ok and not result.failures else "failed"
        reason = ""
        if result.failures:
            codes = ", ".join(f"{n} {code}" for code, n in sorted(result.errors.items()))
            wrong = f"{result.wrong_answers} wrong answers" if result.wrong_answers else ""
            reason = "; ".join(part for part in (codes, wrong) if part)
        on_cell(Outcome(cell, status, reason, result))
