"""Which framework serves a call: the client's choice, else the model's routing policy
(default framework, weighted split, or serve-and-shadow; see `gateway.policy`), else the one
framework that serves the model (`gateway.locations`), else the default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.locations import ModelLocations
from gateway.policy import ModelPolicy
from gateway.settings import known_frameworks
from serving.errors import InvalidInput
from serving.protocol.names import FRAMEWORK_HEADER, FRAMEWORK_PARAM
from serving.types import ParamValue

__all__ = ["FRAMEWORK_HEADER", "FRAMEWORK_PARAM", "Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one inference request goes, and where it is mirrored (if anywhere)."""

    framework: str
    shadow: str | None = None


class Router:
    """Routes by the client's choice, else by the policies: those of the settings (a default
    framework per model) overlaid by those of the routing file, replaceable while serving.
    `available` is the configured set of frameworks; the settings and the file name only
    those (`GatewaySettings`, `gateway.policy.check_frameworks`). With `locations`, a model
    without a policy goes where it lives (`located`)."""

    def __init__(
        self,
        available: Sequence[str],
        default: str,
        per_model: Mapping[str, str],
        locations: ModelLocations | None = None,
    ) -> None:
        self.available = tuple(available)
        self.default = default
        self.locations = locations
        self._base = {
            model: ModelPolicy.model_validate({"framework": framework})
            for model, framework in per_model.items()
        }
        self.policies: Mapping[str, ModelPolicy] = dict(self._base)

    def apply(self, policies: Mapping[str, ModelPolicy]) -> None:
        """Replaces the file's policies (the settings' stay underneath)."""
        self.policies = {**self._base, **policies}

    def policy(self, model: str) -> ModelPolicy | None:
        return self.policies.get(model)

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
            self.check(chosen)
        return chosen

    async def located(self, model: str, wait_s: float = 0.0) -> str:
        """The framework of a call that names none, for a model without a policy: the one
        that serves it; among several, the default if it is one, else the first configured;
        serving nowhere (after a fresh look of at most `wait_s`), the default, whose service
        says why."""
        if self.locations is None:
            return self.check(self.default)
        serving = await self.locations.find(model, wait_s)
        if not serving or self.default in serving:
            return self.check(self.default)
        return serving[0]

    async def choose(
        self,
        model: str,
        metadata: Mapping[str, str],
        parameters: Mapping[str, ParamValue] | None = None,
        *,
        wait_s: float = 0.0,
    ) -> str:
        """The framework of a call about a model (metadata, readiness, training): the
        client's choice, else the policy's primary framework, else where it lives."""
        chosen = self.explicit(metadata, parameters)
        if chosen is not None:
            return chosen
        policy = self.policies.get(model)
        if policy is None:
            return await self.located(model, wait_s)
        return self.check(policy.primary)

    async def route(
        self,
        model: str,
        metadata: Mapping[str, str],
        parameters: Mapping[str, ParamValue] | None = None,
        request_id: str = "",
        *,
        wait_s: float = 0.0,
    ) -> Route:
        """Where an inference request goes. An explicit choice wins over split and shadow;
        a shadow framework this gateway has no service for is left out."""
        chosen = self.explicit(metadata, parameters)
        if chosen is not None:
            return Route(chosen)
        policy = self.policies.get(model)
        if policy is None:
            return Route(await self.located(model, wait_s))
        framework = self.check(policy.pick(model, request_id))
        shadow = policy.shadow if policy.shadow in self.available else None
        return Route(framework, shadow)

    def check(self, framework: str) -> str:
        """The framework itself if this gateway serves it; InvalidInput naming the configured
        set for any other name."""
        if framework not in self.available:
            raise InvalidInput(
                f"unknown framework '{framework}' "
                f"(this gateway serves {known_frameworks(self.available)})"
            )
        return framework
