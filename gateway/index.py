"""The repository index through the gateway: every service's entries, each saying which
framework it is from.

Triton's `RepositoryIndexResponse.ModelIndex` has only name, version, state and reason, and
tritonclient hands the message (or its JSON) to the caller as it is, so the framework goes in
the reason, by a fixed convention: `framework=<name>`, followed by `; <the service's reason>`
when the service gave one (`framework=pytorch; unloaded`). One entry per (model, version,
framework), as each service listed it, ordered by model, version, then framework as
configured: a model served by two frameworks has two entries.
"""

from __future__ import annotations

from collections.abc import Iterable

from serving.pb import inference_pb2 as pb
from serving.protocol.names import FRAMEWORK_PARAM

__all__ = ["framework_reason", "index_with_frameworks"]

# Between the framework and the service's own reason.
SEPARATOR = "; "


def framework_reason(framework: str, reason: str) -> str:
    tag = f"{FRAMEWORK_PARAM}={framework}"
    return f"{tag}{SEPARATOR}{reason}" if reason else tag


def _version_key(version: str) -> tuple[int, str]:
    # Numeric versions in numeric order ("2" before "10"); an empty one (no version) first.
    return (int(version), "") if version.isdigit() else (-1, version)


def index_with_frameworks(
    answers: Iterable[tuple[str, pb.RepositoryIndexResponse]],
) -> pb.RepositoryIndexResponse:
    """One index from each framework's answer, in the order the frameworks are given."""
    rows: list[tuple[str, tuple[int, str], int, pb.RepositoryIndexResponse.ModelIndex]] = []
    for order, (framework, answer) in enumerate(answers):
        for entry in answer.models:
            tagged = pb.RepositoryIndexResponse.ModelIndex(
                name=entry.name,
                version=entry.version,
                state=entry.state,
                reason=framework_reason(framework, entry.reason),
            )
            rows.append((entry.name, _version_key(entry.version), order, tagged))
    rows.sort(key=lambda row: row[:3])
    return pb.RepositoryIndexResponse(models=[row[3] for row in rows])
