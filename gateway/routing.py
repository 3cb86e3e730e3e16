"""Which framework serves a call: the client's choice, else the model's default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serving.errors import BackendUnavailable, InvalidInput
from serving.types import ParamValue

__all__ = ["FRAMEWORK_HEADER", "FRAMEWORK_PARAM", "Router"]

FRAMEWORK_PARAM = "framework"
FRAMEWORK_HEADER = "x-framework"


class Router:
    def __init__(
        self, available: Sequence[str], default: str, per_model: Mapping[str, str]
    ) -> None:
        self.available = tuple(available)
        self.default = default
        self.per_model = dict(per_model)

    def explicit(
        self, metadata: Mapping[str, str], parameters: Mapping[str, ParamValue] | None = None
    ) -> str | None:
        """The framework the client asked for, if any (parameter or metadata, which must
        agree when both are given)."""
        from_header = metadata.get(FRAMEWORK_HEADER)
        from_param = (parameters or {}).get(FRAMEWORK_PARAM)
        if from_param is not None and not isinstance(from_param, str):
            raise InvalidInput(f"parameter '{FRAMEWORK_PARAM}' must be a string")
        if from_header and from_param and from_header != from_param:
            raise InvalidInput(
                f"the request asks for framework '{from_param}' in its parameters and "
                f"'{from_header}' in metadata '{FRAMEWORK_HEADER}'"
            )
        chosen = from_param or from_header
        if chosen is not None:
            self._check(chosen)
        return chosen

    def choose(
        self,
        model: str,
        metadata: Mapping[str, str],
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> str:
        chosen = self.explicit(metadata, parameters)
        return (
            chosen if chosen is not None else self._check(self.per_model.get(model, self.default))
        )

    def _check(self, framework: str) -> str:
        if framework not in ("tensorflow", "pytorch"):
            raise InvalidInput(f"unknown framework '{framework}' (use 'tensorflow' or 'pytorch')")
        if framework not in self.available:
            raise BackendUnavailable(f"no {framework} service is configured in this gateway")
        return framework
