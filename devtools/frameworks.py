"""The frameworks a local stack runs, and how to start each one's service: read from one file,
`devtools/frameworks.json`, by the launcher (`make run`), the load test and the benchmarks.

Each entry names a framework (the value of the protocol's `framework` parameter) and says:

    module        the package whose `python -m <module> serve` is its service
    repository    its model repository, a directory under the models root; a framework that
                  does not train serves another's (the onnx service serves pytorch's exports)
    port          its gRPC port in `make run` (and metrics_port: its Prometheus port)
    runtimes      the runtimes the load test and benchmarks measure, "native" first
    trains        whether it trains (and so seeds its repository); default true
    gpu_libraries what its service needs to run on a GPU (the load test's probes, in
                  loadtest/devices.py, say whether each can here)
    cpu_only_runtimes  runtimes that never run on a GPU (TFLite's interpreter)

Adding a framework is one entry here and its package; the gateway takes the set from its own
settings (`TWINSERVE_GATEWAY_FRAMEWORKS`), which the launchers fill from this file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "FRAMEWORKS_FILE",
    "Framework",
    "frameworks",
    "gateway_frameworks",
    "is_model_repository",
    "repository_of",
]

FRAMEWORKS_FILE = Path(__file__).with_name("frameworks.json")


@dataclass(frozen=True, slots=True)
class Framework:
    name: str
    module: str
    repository: str
    port: int
    metrics_port: int
    runtimes: tuple[str, ...] = ("native",)
    trains: bool = True
    gpu_libraries: tuple[str, ...] = ()
    cpu_only_runtimes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, name: str, raw: Mapping[str, Any]) -> Framework:
        unknown = set(raw) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"framework '{name}': unknown keys {sorted(unknown)}")
        runtimes = tuple(str(runtime) for runtime in raw.get("runtimes", ("native",)))
        if not runtimes or runtimes[0] != "native":
            raise ValueError(f"framework '{name}': runtimes must start with 'native'")
        return cls(
            name=name,
            module=str(raw["module"]),
            repository=str(raw["repository"]),
            port=int(raw["port"]),
            metrics_port=int(raw["metrics_port"]),
            runtimes=runtimes,
            trains=bool(raw.get("trains", True)),
            gpu_libraries=tuple(str(name) for name in raw.get("gpu_libraries", ())),
            cpu_only_runtimes=tuple(str(name) for name in raw.get("cpu_only_runtimes", ())),
        )


def frameworks(path: Path = FRAMEWORKS_FILE) -> dict[str, Framework]:
    """Every framework of the file, in its order; ValueError saying what is wrong."""
    try:
        raw = json.loads(path.read_text())
        found = {name: Framework.from_json(name, entry) for name, entry in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid frameworks file: {exc}") from exc
    filled = {f.repository for f in found.values() if f.trains}
    for framework in found.values():
        if framework.repository not in filled:
            raise ValueError(
                f"{path}: '{framework.name}' does not train, and no framework that does "
                f"fills its repository '{framework.repository}'"
            )
    return found


def gateway_frameworks(addresses: Mapping[str, str]) -> dict[str, str]:
    """The gateway's environment naming these services: TWINSERVE_GATEWAY_FRAMEWORKS."""
    return {"TWINSERVE_GATEWAY_FRAMEWORKS": json.dumps(dict(addresses))}


def is_model_repository(models: Path) -> bool:
    """Whether `models` is itself a model repository (Triton's layout: `<model>/config.pbtxt`
    or `<model>/<version>/`), which every service then serves, rather than the root of one
    repository per framework (`models/tensorflow`, `models/pytorch`) that `make run` seeds."""
    if not models.is_dir():
        return False
    for model in models.iterdir():
        if not model.is_dir() or model.name.startswith("."):
            continue
        if (model / "config.pbtxt").is_file() or (model / "config.json").is_file():
            return True
        if any(entry.is_dir() and entry.name.isdecimal() for entry in model.iterdir()):
            return True
    return False


def repository_of(models: Path, framework: Framework) -> Path:
    """The repository `framework`'s service serves: `models` itself when it is a model
    repository (one for every service, as Triton serves one), else its own under `models`."""
    return models if is_model_repository(models) else models / framework.repository
