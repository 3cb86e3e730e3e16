"""The report: JSON and CSV with every figure, a Markdown page with the plots, and the
terminal table. Throughput is given twice: requests/s, and samples/s (rows per request, the
batch, times requests/s), since a bigger batch trades one for the other."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from loadtest.matrix import Outcome
from loadtest.plots import plot_all, unavailable
from loadtest.summary import COLUMNS, cpu_vs_gpu, row, winners
from serving.machine import cpu_model

__all__ = ["machine", "samples_per_s", "write_report", "write_table"]

_LIBRARIES = (
    "twinserve", "grpcio", "protobuf", "numpy", "tensorflow", "tensorflow-cpu", "tf2onnx",
    "torch", "onnxruntime", "onnxruntime-gpu", "hdrhistogram",
)  # fmt: skip


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine() -> dict[str, Any]:
    """What ran the load test (the client's machine: with local services, theirs too)."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory": memory,
        "gpus": _gpus() or ["none"],
        "libraries": versions,
    }


def samples_per_s(outcome: Outcome) -> float | None:
    """Rows answered per second: the batch times the correct answers per second."""
    if outcome.result is None:
        return None
    return outcome.cell.target.batch * outcome.result.throughput


def _row(outcome: Outcome) -> dict[str, Any]:
    """summary.row with samples/s beside requests/s (the CSV's `_COLUMNS`)."""
    samples = samples_per_s(outcome)
    return {**row(outcome), "samples_per_s": "" if samples is None else round(samples, 1)}


_COLUMNS = [
    name for column in COLUMNS
    for name in ((column, "samples_per_s") if column == "throughput_per_s" else (column,))
]  # fmt: skip


def _cell(outcome: Outcome) -> dict[str, Any]:
    """A cell of report.json: the outcome, with samples/s beside the result's requests/s."""
    cell = outcome.to_dict()
    if cell["result"] is not None:
        cell["result"]["samples_per_s"] = samples_per_s(outcome)
    return cell


def _rate(value: Any) -> str:
    return "" if value == "" else f"{value:,.0f}"


def _ms(value: Any) -> str:
    return "" if value == "" or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_table(outcomes: list[Outcome], out: TextIO) -> None:
    """The terminal table: one line per cell."""
    figure_names = ("p50", "p90", "p99", "p99.9", "max", "req/s")
    header = f"{'model':12} {'b':>3} {'device':6} {'target':34} {'c':>3} " + " ".join(
        f"{name:>8}" for name in figure_names
    )
    header += f" {'samples/s':>10}"
    header += "  notes"
    print(header, file=out)
    print("-" * len(header), file=out)
    for o in outcomes:
        r = _row(o)
        notes = "; ".join(
            part for part in (
                "" if o.status == "ok" else f"{o.status}: {o.reason}",
                f"client saturated: {r['client_saturated']}" if r["client_saturated"] else "",
            ) if part
        )  # fmt: skip
        figures = " ".join(
            f"{_ms(r[k]):>8}" for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")
        )
        tput = f"{r['throughput_per_s']:>8,.0f}" if r["throughput_per_s"] != "" else f"{'':>8}"
        print(
            f"{r['model']:12} {r['batch']:>3} {r['device']:6} {r['target']:34} "
            f"{r['concurrency']:>3} "
            f"{figures} {tput} {_rate(r['samples_per_s']):>10}  {notes}",
            file=out,
        )


def _markdown(outcomes: list[Outcome], run: dict[str, Any], plots: list[Path]) -> str:
    lines = ["# twinserve load test", ""]
    m = run["machine"]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, GPUs: {', '.join(m['gpus'])}; "
        f"{m['platform']}, Python {m['python']}.",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".",
        "",
        f"Settings: {json.dumps(run['settings'])}.",
        f"Started {run['started']}; took {run['elapsed_s']:.0f} s.",
        "",
        "Closed loop: each concurrency level keeps that many calls in flight (spread over the "
        "client processes) for the duration, after a warm-up that is not recorded. Latency is "
        "per correct answer, in ms, from an HDR histogram; every answer is checked, and a wrong "
        "one counts as a failure. `not available` cells say why they did not run. req/s "
        "counts correct answers; samples/s is the batch times req/s.",
        "",
    ]
    missing = unavailable()  # a host without matplotlib (the GPU kit's) still gets the tables
    if missing:
        lines += [f"{missing[0].upper()}{missing[1:]}.", ""]
    groups: dict[tuple[str, int, str], list[Outcome]] = {}
    for o in outcomes:
        t = o.cell.target
        groups.setdefault((t.model, t.batch, t.device), []).append(o)
    for (model, batch, device), members in groups.items():
        lines += [f"## {model}, batch {batch}, {device}", ""]
        lines += [
            "| target | c | p50 | p90 | p99 | p99.9 | max | mean | req/s | samples/s | errors "
            "| client CPU | notes |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in members:
            r = _row(o)
            if o.result is None:
                lines.append(
                    f"| {r['target']} | {r['concurrency']} | {o.status}: {o.reason} |||||||||||"
                )
                continue
            notes = "" if o.status == "ok" else f"{o.status}: {o.reason}"
            if r["client_saturated"]:
                notes += f" client saturated: {r['client_saturated']}"
            figures = " | ".join(
                _ms(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "mean_ms")
            )
            lines.append(
                f"| {r['target']} | {r['concurrency']} | {figures} | "
                f"{_rate(r['throughput_per_s'])} | {_rate(r['samples_per_s'])} | "
                f"{r['errors'] or 0} | "
                f"{r['client_cpu_max']} x{r['client_processes']} | {notes.strip()} |"
            )
        lines.append("")
        for plot in plots:
            stem = f"-{model}-b{batch}-{device.replace(':', '')}.png"
            if plot.name.endswith(stem):
                lines += [f"![{plot.stem}]({plot.name})", ""]
    lines += [
        "## Winners",
        "",
        "Lowest p50 per cell (the runner-up's p50 over the winner's), and the highest throughput.",
        "",
    ]
    lines += [
        "| model | batch | device | path | c | fastest (p50) | by | runner-up | most req/s | by |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    for w in run["winners"]:
        lines.append(
            f"| {w['model']} | {w['batch']} | {w['device']} | {w['path']} | {w['concurrency']} | "
            f"{w['fastest']} ({w['fastest_p50_ms']:.3f} ms) | {w.get('p50_margin', 1):.2f}x | "
            f"{w.get('runner_up', '-')} | {w['highest_throughput']} | "
            f"{w.get('throughput_margin', 1):.2f}x |"
        )
    lines += ["", "## CPU vs GPU (p50 ms)", ""]
    lines += [
        "| model | batch | target | c | CPU | GPU | winner |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in run["cpu_vs_gpu"]:
        winner = f"{e['winner']} by {e['ratio']:.2f}x" if "winner" in e else "-"
        lines.append(
            f"| {e['model']} | {e['batch']} | {e['framework']}/{e['runtime']} {e['path']} | "
            f"{e['concurrency']} | {e['cpu']} | {e['gpu']} | {winner} |"
        )
    lines.append("")
    for plot in plots:
        if plot.name.startswith("cpu-vs-gpu"):
            lines += [f"![{plot.stem}]({plot.name})", ""]
    return "\n".join(lines)


def write_report(outcomes: list[Outcome], run: dict[str, Any], out: Path) -> list[Path]:
    """Writes report.json, report.csv, report.md and the plots under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    run = {**run, "winners": winners(outcomes), "cpu_vs_gpu": cpu_vs_gpu(outcomes)}
    payload = {**run, "cells": [_cell(o) for o in outcomes]}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str, allow_nan=True))
    with (out / "report.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, _COLUMNS)
        writer.writeheader()
        writer.writerows(_row(o) for o in outcomes)
    plots = plot_all(outcomes, out)
    (out / "report.md").write_text(_markdown(outcomes, run, plots))
    return [out / "report.json", out / "report.csv", out / "report.md", *plots]
