"""The comparison matrix: every model x batch x device x framework x runtime x path x
concurrency, as cells; each target is checked with one call before it is loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from loadtest.cells import PATHS, RUNTIMES, Cell, Outcome, Target, address_of, call
from loadtest.checks import Checker
from loadtest.generator import ClientPool
from loadtest.references import References
from loadtest.targets import Endpoints
from loadtest.workloads import MODELS, Workload
from serving.pb import inference_pb2 as pb
from serving.protocol.names import FRAMEWORK_PARAM, RUNTIME_PARAM

__all__ = [
    "RUNTIMES",
    "Cell",
    "Outcome",
    "References",
    "Target",
    "address_of",
    "run_target",
    "targets_for",
]


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


def _first_answer(
    target: Target, address: str, endpoints: Endpoints, references: References
) -> tuple[bytes, Checker, str | None]:
    """The request `target` sends, checked with one call: the checker of its run and the
    mismatch with the reference (served models). ValueError for a wrong answer, LookupError
    where the target cannot run, grpc.RpcError from the call."""
    framework = target.framework if target.framework != "echo" else ""
    runtime = target.runtime if target.framework != "echo" else ""
    framework_param = framework if target.path == "gateway" else None
    if target.model in MODELS:
        workload = Workload(target.model, target.batch)
        request = workload.request(framework_param, runtime)
        checker: Checker = references.checker(target, workload, endpoints)
        answer = call(address, request, endpoints.metadata)
        verdict = checker(answer.SerializeToString()) or _other_target(target, answer)
        if verdict is not None:
            raise ValueError(f"wrong answer: {verdict}")
        return request, checker, None
    request = references.model_of(target).request(target.batch, framework_param, runtime)
    answer = call(address, request, endpoints.metadata)
    verdict = _other_target(target, answer)
    if verdict is not None:
        raise ValueError(f"wrong answer: {verdict}")
    return request, *references.judge(target, answer, endpoints)


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
    """Checks `target` with one call, then loads it at each concurrency; reports each cell.
    A served model whose answer differs from the reference's is measured, as a mismatch."""
    cells = [Cell(target, c) for c in concurrencies]
    address = address_of(target, endpoints)
    try:
        if address is None:
            raise LookupError(f"no {target.path} endpoint for {target.framework} was given")
        request, checker, mismatch = _first_answer(target, address, endpoints, references)
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
        status = "mismatch" if mismatch else "ok"
        if not result.ok or result.failures:
            status = "failed"
        codes = ", ".join(f"{n} {code}" for code, n in sorted(result.errors.items()))
        wrong = f"{result.wrong_answers} wrong answers" if result.wrong_answers else ""
        reason = "; ".join(part for part in (mismatch, codes, wrong) if part)
        on_cell(Outcome(cell, status, reason, result))
