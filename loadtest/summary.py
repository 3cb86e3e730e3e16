"""Figures the reports share: one flat row per cell, winners per cell, CPU against GPU."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from loadtest.matrix import Outcome

__all__ = ["COLUMNS", "cpu_vs_gpu", "row", "winners"]

COLUMNS = [
    "model", "batch", "device", "framework", "runtime", "path", "target", "concurrency",
    "status", "reason", "requests", "ok", "throughput_per_s", "p50_ms", "p90_ms", "p99_ms",
    "p99.9_ms", "max_ms", "mean_ms", "errors", "wrong_answers", "client_processes",
    "client_cpu_max", "client_saturated",
]  # fmt: skip


def row(outcome: Outcome) -> dict[str, Any]:
    target, result = outcome.cell.target, outcome.result
    values: dict[str, Any] = {
        "model": target.model,
        "batch": target.batch,
        "device": target.device,
        "framework": target.framework,
        "runtime": target.runtime,
        "path": target.path,
        "target": target.label,
        "concurrency": outcome.cell.concurrency,
        "status": outcome.status,
        "reason": outcome.reason,
    }
    if result is not None:
        values |= {f"{k}_ms": round(v, 4) for k, v in result.latency_ms().items()}
        values |= {
            "requests": result.requests,
            "ok": result.ok,
            "throughput_per_s": round(result.throughput, 1),
            "errors": json.dumps(result.errors) if result.errors else "",
            "wrong_answers": result.wrong_answers,
            "client_processes": len(result.client_cpu),
            "client_cpu_max": round(max(result.client_cpu, default=0.0), 3),
            "client_saturated": result.client_saturated or "",
        }
    return {column: values.get(column, "") for column in COLUMNS}


def _ok(outcome: Outcome) -> bool:
    return (
        outcome.status == "ok"
        and outcome.result is not None
        and not math.isnan(outcome.result.percentile_ms(50))
    )


def winners(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Per (model, batch, device, path, concurrency): the lowest p50 and the highest
    throughput among the frameworks' targets, and by how much they beat the runner-up."""
    groups: dict[tuple[Any, ...], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        t = o.cell.target
        if _ok(o) and t.framework != "echo":
            groups[(t.model, t.batch, t.device, t.path, o.cell.concurrency)].append(o)
    table = []
    for (model, batch, device, path, concurrency), members in sorted(groups.items()):
        by_p50 = sorted(members, key=lambda o: o.result.percentile_ms(50) if o.result else 0)
        by_tput = sorted(members, key=lambda o: -(o.result.throughput if o.result else 0))
        entry: dict[str, Any] = {
            "model": model, "batch": batch, "device": device, "path": path,
            "concurrency": concurrency, "candidates": len(members),
            "fastest": by_p50[0].cell.target.label,
            "fastest_p50_ms": by_p50[0].result.percentile_ms(50) if by_p50[0].result else None,
            "highest_throughput": by_tput[0].cell.target.label,
        }  # fmt: skip
        if len(members) > 1 and by_p50[0].result and by_p50[1].result:
            entry["runner_up"] = by_p50[1].cell.target.label
            entry["p50_margin"] = by_p50[1].result.percentile_ms(50) / by_p50[
                0
            ].result.percentile_ms(50)
        if (
            len(members) > 1
            and by_tput[0].result
            and by_tput[1].result
            and by_tput[1].result.throughput
        ):
            entry["throughput_margin"] = by_tput[0].result.throughput / by_tput[1].result.throughput
        table.append(entry)
    return table


def cpu_vs_gpu(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """Per (model, batch, framework, runtime, path, concurrency): CPU and GPU p50, the
    winner and the ratio, or why the GPU cell did not run."""
    cells: dict[tuple[Any, ...], dict[str, Outcome]] = defaultdict(dict)
    for o in outcomes:
        t = o.cell.target
        if t.framework == "echo":
            continue
        kind = "cpu" if t.device == "cpu" else "gpu"
        cells[(t.model, t.batch, t.framework, t.runtime, t.path, o.cell.concurrency)][kind] = o
    table = []
    for key, pair in sorted(cells.items()):
        entry: dict[str, Any] = dict(
            zip(("model", "batch", "framework", "runtime", "path", "concurrency"), key, strict=True)
        )
        for kind in ("cpu", "gpu"):
            found = pair.get(kind)
            if found is None:
                entry[kind] = "not run"
            elif _ok(found) and found.result:
                entry[kind] = round(found.result.percentile_ms(50), 4)
            else:
                entry[kind] = f"{found.status}: {found.reason}"
        cpu, gpu = entry["cpu"], entry["gpu"]
        if isinstance(cpu, float) and isinstance(gpu, float):
            entry["winner"] = "gpu" if gpu < cpu else "cpu"
            entry["ratio"] = max(cpu, gpu) / min(cpu, gpu)
        table.append(entry)
    return table
