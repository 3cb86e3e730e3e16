"""The answers each target of the matrix is checked against."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from loadtest.cells import PATHS, Target, address_of, call
from loadtest.checks import FLOAT_TOLERANCE, Checker, OutputClose, OutputsClose, output_array
from loadtest.served import Served, ServedModel
from loadtest.targets import Endpoints
from loadtest.workloads import Workload
from serving.errors import ServingError
from serving.pb import inference_pb2 as pb

__all__ = ["Reference", "References"]


class References:
    """Expected answers. A built-in model's per (model, batch, framework): known in advance
    (house_price) or the native runtime's first answer, which every other runtime and path
    must then match. A served model's (`served`, read before the matrix runs) per (model,
    batch): the first framework's native answer, which every target of every framework is
    compared to, so that two frameworks' versions of one model are too."""

    def __init__(
        self, served: Mapping[str, Served] | None = None, frameworks: Sequence[str] = ()
    ) -> None:
        self._answers: dict[tuple[str, int, str], OutputClose] = {}
        self.served = dict(served or {})
        self.frameworks = tuple(frameworks)  # in the order they are tried for the reference
        self._references: dict[tuple[str, int], Reference | None] = {}

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
                    call(address, workload.request(target.framework, ""), endpoints.metadata),
                    output,
                )
                atol = FLOAT_TOLERANCE * max(1.0, float(np.max(np.abs(answer))))
                self._answers[key] = OutputClose.of(output, answer, atol)
        return self._answers[key]

    def model_of(self, target: Target) -> ServedModel:
        """What `target` serves of its (served) model; LookupError saying why it cannot run."""
        served = self.served.get(target.model, {}).get((target.framework, target.path))
        if served is None:
            raise LookupError(f"{target.framework} was not asked about {target.model}")
        if isinstance(served, str):
            raise LookupError(served)
        why = served.unavailable(target.batch)
        if why is not None:
            raise LookupError(why)
        return served

    def reference(self, model: str, batch: int, endpoints: Endpoints) -> Reference | None:
        """The first native answer at `batch` of a framework that serves `model`, in the
        frameworks' order (direct before the gateway); None if none answers."""
        key = (model, batch)
        if key not in self._references:
            self._references[key] = None
            for framework, path in itertools.product(self.frameworks, PATHS):
                target = Target(model, batch, "", framework, "native", path)
                address = address_of(target, endpoints)
                try:
                    served = self.model_of(target)
                    request = served.request(batch, framework if path == "gateway" else None, "")
                    checker = OutputsClose.of(call(address or "", request, endpoints.metadata))
                except (LookupError, grpc.RpcError, ServingError):
                    continue
                self._references[key] = Reference(target.label, served.shapes(batch), checker)
                break
        return self._references[key]

    def judge(
        self, target: Target, answer: pb.ModelInferResponse, endpoints: Endpoints
    ) -> tuple[Checker, str | None]:
        """The checker of a served model's target from its first answer, and the mismatch
        with the reference if there is one: then the checker is its own first answer, so that
        its run still counts answers that change (a different model is not a wrong one)."""
        try:
            own = OutputsClose.of(answer)
        except ServingError as exc:
            raise ValueError(f"unreadable answer: {exc}") from None
        reference = self.reference(target.model, target.batch, endpoints)
        if reference is None:
            return own, None
        shapes = self.model_of(target).shapes(target.batch)
        if shapes != reference.shapes:
            return own, (
                f"its inputs {_inputs(shapes)} are not those of the reference "
                f"{reference.label} ({_inputs(reference.shapes)}): the answers cannot compare"
            )
        verdict = reference.checker(answer.SerializeToString())
        if verdict is not None:
            return own, f"answers differ from the reference {reference.label}: {verdict}"
        return reference.checker, None


@dataclass(frozen=True)
class Reference:
    label: str  # the target that answered it
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # its inputs' datatypes and shapes
    checker: OutputsClose


def _inputs(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> str:
    return ", ".join(f"{datatype} {list(shape)}" for datatype, shape in shapes)
