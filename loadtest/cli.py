"""`python -m loadtest`: the latency matrix, on services it starts here or on running ones.

python -m loadtest                                   # house_price, every CPU cell, GPU cells
python -m loadtest --models house_price,mlp,cnn --batches 1,32 --concurrency 1,4,16
python -m loadtest --gateway gateway:8001 --service tensorflow=tf:8500 --service pytorch=torch:7070
python -m loadtest --models my_model --model-repository triton_models/   # any model served

A model that is not built in is one the services already serve: its requests are generated
from what each target says it takes (ModelMetadata, ModelConfig's max_batch_size), and every
target is compared with the first framework's native answer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest import plots
from loadtest.devices import DeviceProbe, gpu_libraries, gpu_unavailable
from loadtest.generator import ClientPool, default_processes
from loadtest.matrix import Cell, Outcome, References, Target, run_target, targets_for
from loadtest.progress import Progress
from loadtest.report import machine, write_report, write_table
from loadtest.served import Served, notes, read_served
from loadtest.targets import FRAMEWORKS, KNOWN, Endpoints, LocalStack, seed_models
from loadtest.workloads import MODELS, Workload, ensure_loaded, ensure_model
from serving.protocol.names import AUTHORIZATION_HEADER

__all__ = ["main"]


def _list(kind: type, text: str) -> list[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", default="house_price",
                   help=f"built in: {','.join(MODELS)}; any other: one already served")  # fmt: skip
    p.add_argument("--batches", default="1,32", help="batch sizes (house_price: 1 only)")
    p.add_argument("--concurrency", default="1,4,16", help="calls in flight, per cell")
    p.add_argument("--duration", type=float, default=1.5, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=0.3, help="unrecorded seconds per cell")
    p.add_argument("--devices", default="cpu,cuda",
                   help="local: devices for the services; remote: the one they use")  # fmt: skip
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="of devtools/frameworks.json: " + ",".join(FRAMEWORKS))  # fmt: skip
    p.add_argument("--clients", type=int, default=default_processes(), help="client processes")
    p.add_argument("--out", type=Path, default=Path("loadtest-report"))
    p.add_argument("--model-repository", type=Path, default=Path("models"),
                   help="local: holds each framework's repository, or is a Triton model "
                        "repository that every service serves")  # fmt: skip
    p.add_argument("--no-echo", action="store_true", help="local: skip the echo floor")
    remote = p.add_argument_group("running endpoints (no services are started)")
    remote.add_argument("--gateway", help="HOST:PORT of a gateway")
    remote.add_argument("--service", dest="services", action="append", default=[],
                        metavar="FRAMEWORK=HOST:PORT",
                        help="a framework's service, repeatable")  # fmt: skip
    remote.add_argument(
        "--token",
        default=os.environ.get("TWINSERVE_TOKEN"),
        help="bearer token for a gateway that requires one (default: $TWINSERVE_TOKEN)",
    )
    return p


def _services(given: Sequence[str]) -> dict[str, str]:
    """FRAMEWORK=HOST:PORT pairs, by framework."""
    services = {}
    for pair in given:
        framework, _, address = pair.partition("=")
        if not framework or not address:
            raise SystemExit(f"--service {pair!r}: give FRAMEWORK=HOST:PORT")
        services[framework] = address
    return services


class _Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.frameworks = tuple(_list(str, args.frameworks))
        self.services = _services(args.services)
        unknown_frameworks = (set(self.frameworks) | set(self.services)) - set(FRAMEWORKS)
        if unknown_frameworks:
            raise SystemExit(
                f"unknown framework(s) {', '.join(sorted(unknown_frameworks))}: "
                f"devtools/frameworks.json has {', '.join(FRAMEWORKS)}"
            )
        self.concurrencies = _list(int, args.concurrency)
        self.workloads = [
            Workload(model, batch)
            for model in _list(str, args.models)
            for batch in ([1] if model == "house_price" else _list(int, args.batches))
        ]
        self.remote = bool(args.gateway or self.services)
        self.devices = _list(str, args.devices)
        if self.remote and len(self.devices) != 1:
            self.devices = ["cpu"] if args.devices == "cpu,cuda" else self.devices[:1]
        self.outcomes: list[Outcome] = []
        # Frameworks whose repository could not be seeded: their cells say why, everywhere.
        self.unseeded: dict[str, str] = {}
        per_device = sum(
            len(targets_for([w], "cpu", self.frameworks, echo=not self.remote and not args.no_echo))
            for w in self.workloads
        )
        self.progress = Progress(per_device * len(self.concurrencies) * len(self.devices))

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.progress.cell(outcome)

    def skip(self, targets: list[Target], reason: str) -> None:
        for target in targets:
            for c in self.concurrencies:
                self.record(Outcome(Cell(target, c), "not available", reason))

    def _keep(self, targets: list[Target], why: Callable[[Target], str | None]) -> list[Target]:
        """The targets `why` finds nothing against; the others' cells say what it found."""
        kept = []
        for target in targets:
            reason = why(target)
            if reason:
                self.skip([target], reason)
            else:
                kept.append(target)
        return kept

    def served(self, endpoints: Endpoints, targets: list[Target]) -> dict[str, Served]:
        """What each target endpoint serves of each model that is not built in: read before
        any cell runs, since one framework's answer is every framework's reference."""
        frameworks = [f for f in self.frameworks if any(t.framework == f for t in targets)]
        found = {}
        for model in dict.fromkeys(w.model for w in self.workloads if w.model not in MODELS):
            found[model] = read_served(model, frameworks, endpoints)
            for line in notes(model, found[model], endpoints):
                self.progress.note(line)
        return found

    def measure(self, endpoints: Endpoints, targets: list[Target], pool: ClientPool) -> None:
        for w in self.workloads:
            # house_price is seeded; a model that is not built in is served as it is.
            if w.model == "house_price" or w.model not in MODELS:
                continue
            via_gateway = not endpoints.direct
            addresses = endpoints.direct or {
                framework: endpoints.gateway for framework in self.frameworks if endpoints.gateway
            }
            # Those that train first: the others serve what they trained.
            for framework, address in sorted(
                addresses.items(), key=lambda pair: not KNOWN[pair[0]].trains
            ):
                ensure = ensure_model if KNOWN[framework].trains else ensure_loaded
                self.progress.note(
                    ensure(
                        w.spec,
                        framework,
                        address,
                        via_gateway=via_gateway,
                        metadata=endpoints.metadata,
                    )
                )
        references = References(self.served(endpoints, targets), self.frameworks)
        for target in targets:
            run_target(target, self.concurrencies, endpoints, references, pool,
                       duration_s=self.args.duration, warmup_s=self.args.warmup,
                       on_cell=self.record)  # fmt: skip

    def device(self, device: str, pool: ClientPool, probe: DeviceProbe | None) -> None:
        echo = device == "cpu" and not self.remote and not self.args.no_echo
        targets = targets_for(self.workloads, device, self.frameworks, echo=echo)
        if self.remote:
            direct = {f: a for f, a in self.services.items() if f in self.frameworks}
            token = self.args.token
            metadata = ((AUTHORIZATION_HEADER, f"Bearer {token}"),) if token else ()
            self.measure(Endpoints(direct, self.args.gateway, metadata=metadata), targets, pool)
            return
        runnable = self._keep(targets, lambda t: self.unseeded.get(t.framework))
        if device != "cpu" and probe is not None:
            reasons = probe.reasons()
            runnable = self._keep(
                runnable, lambda t: gpu_unavailable(t.framework, t.runtime, reasons)
            )
        frameworks = [f for f in self.frameworks if any(t.framework == f for t in runnable)]
        if not runnable:
            return
        stack = LocalStack(self.args.model_repository, self.args.out / "logs")
        try:
            self.progress.note(f"starting {', '.join(frameworks)} on {device} ...")
            endpoints = stack.start(device, tuple(frameworks), echo=echo)
        except RuntimeError as exc:
            stack.stop()
            self.skip(runnable, f"the service did not start: {exc}")
            return
        # One framework that did not start (TensorFlow missing here) leaves the rest measured.
        failures = {
            name: f"the service did not start: {why}" for name, why in stack.failures.items()
        }
        started = self._keep(runnable, lambda t: failures.get(t.framework))
        try:
            self.measure(endpoints, started, pool)
        finally:
            stack.stop()

    def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        # Only the selected frameworks' libraries are probed, and seeded, and started: a host
        # without TensorFlow runs `--frameworks pytorch` without ever importing it.
        probe = None if self.remote else DeviceProbe(libraries=gpu_libraries(self.frameworks))
        if not self.remote:
            self.args.out.mkdir(parents=True, exist_ok=True)
            (self.args.out / "logs").mkdir(exist_ok=True)
            self.progress.note(f"seeding models into {self.args.model_repository} if missing ...")
            self.unseeded = seed_models(
                self.args.model_repository, self.args.out / "logs" / "seed.log", self.frameworks
            )
            for framework, why in self.unseeded.items():
                self.progress.note(f"{framework}: {why}")
        with ClientPool(self.args.clients) as pool:
            for device in self.devices:
                self.device(device, pool, probe)
        self.progress.finish()
        settings = {
            k: v for k, v in vars(self.args).items() if k not in ("out", "model_repository")
        } | {"mode": "remote" if self.remote else "local", "loop": "closed"}
        return {
            "started": stamp,
            "elapsed_s": time.monotonic() - started,
            "settings": settings,
            "machine": machine(),
            "gpu_probe": probe.reasons() if probe else "not probed (remote endpoints)",
            # What the report lacks here and why (plots without matplotlib).
            "notes": [note for note in (plots.unavailable(),) if note],
        }


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run = _Run(args)
    info = run.execute()
    written = write_report(run.outcomes, info, args.out)
    write_table(run.outcomes, sys.stdout)
    print(f"\n{len(run.outcomes)} cells in {info['elapsed_s']:.0f} s; report: "
          + ", ".join(str(p) for p in written[:3]) + f" and {len(written) - 3} plots")  # fmt: skip
    for note in info["notes"]:
        print(f"note: {note}")
