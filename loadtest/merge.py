"""`python -m loadtest merge`: load-test reports from several runs (a CPU host's and a GPU
host's, say, or two runs on one) as one CPU-vs-GPU table and plot, each host's description kept.

python -m loadtest merge cpu-report/ gpu-report/report.json --out merged/

A column of the table is one device on one host ("cuda @ gpu-box"); a cell both inputs hold
(the CPU on both hosts) is two columns, never one input's figure over the other's. The merge
reads only the reports' JSON (no services are started, nothing is measured; without
matplotlib the plots are skipped), and a merged report can itself be merged again.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.merge_plot import Curves, plot_curves

__all__ = ["KEY", "Column", "Source", "load", "main", "merge", "write_merged"]

# What makes two cells the same measurement; a merged row is KEY without the device.
KEY = ("model", "batch", "framework", "runtime", "path", "device", "concurrency")
_ROW = tuple(k for k in KEY if k != "device")
# Kept from each report's run: what describes the host and the run, not the derived tables.
_RUN = ("started", "elapsed_s", "settings", "machine", "gpu_probe")


@dataclass
class Source:
    """One run's report: `label` names it in the merged columns (its host, made unique)."""

    label: str
    file: str
    run: dict[str, Any]
    cells: list[dict[str, Any]]


@dataclass(frozen=True)
class Column:
    device: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.device} @ {self.source}"


def _read(path: Path) -> tuple[Path, dict[str, Any]]:
    file = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{file}: cannot read a load-test report: {exc}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("cells"), list):
        raise SystemExit(f"{file}: not a load-test report (no 'cells')")
    for cell in report["cells"]:
        missing = [k for k in KEY if k not in cell]
        if missing:
            raise SystemExit(f"{file}: a cell lacks {', '.join(missing)}")
    return file, report


def _unique(wanted: str, taken: set[str]) -> str:
    """Two runs on one host (or one report given twice) stay two sources."""
    label, n = wanted, 1
    while label in taken:
        n += 1
        label = f"{wanted}#{n}"
    taken.add(label)
    return label


def load(paths: Sequence[Path]) -> list[Source]:
    """Each report (a directory holding report.json, or the file), in the order given; a
    merged report gives back the sources it was merged from."""
    sources: list[Source] = []
    taken: set[str] = set()
    for path in paths:
        file, report = _read(path)
        if "sources" in report:
            for s in report["sources"]:
                run = {k: s.get(k) for k in _RUN}
                mine = [c for c in report["cells"] if c.get("source") == s["label"]]
                cells = [{k: v for k, v in c.items() if k != "source"} for c in mine]
                sources.append(Source(_unique(s["label"], taken), s["file"], run, cells))
            continue
        run = {k: report.get(k) for k in _RUN}
        host = str((run["machine"] or {}).get("host") or file.parent.name or file.stem)
        sources.append(Source(_unique(host, taken), str(file), run, report["cells"]))
    return sources


def _figures(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell's figures in the merged table: p50 and p99 (ms), req/s and samples/s."""
    entry: dict[str, Any] = {"status": cell["status"], "reason": cell.get("reason", "")}
    result = cell.get("result")
    if result and result.get("ok"):
        latency = result["latency_ms"]
        entry |= {
            "p50_ms": latency["p50"],
            "p99_ms": latency["p99"],
            "throughput_per_s": result["throughput_per_s"],
            # Computed, not read: reports older than samples/s merge the same way.
            "samples_per_s": cell["batch"] * result["throughput_per_s"],
            "client_saturated": result.get("client_saturated"),
        }
    return entry


def _measured(entry: dict[str, Any]) -> bool:
    return "p50_ms" in entry and not math.isnan(entry["p50_ms"])


def _competes(entry: dict[str, Any]) -> bool:
    """Only a correct, measured cell wins (a mismatch is measured but answers otherwise)."""
    return entry["status"] == "ok" and _measured(entry)


def _best(row: dict[str, Any], figure: str, lowest: bool) -> dict[str, Any]:
    ranked = sorted(
        ((e[figure], label) for label, e in row["columns"].items() if _competes(e)),
        reverse=not lowest,
    )
    if not ranked:
        return {}
    best: dict[str, Any] = {"column": ranked[0][1]}
    if len(ranked) > 1 and ranked[0][0] and ranked[1][0]:
        a, b = ranked[0][0], ranked[1][0]
        best["margin"] = b / a if lowest else a / b
        best["runner_up"] = ranked[1][1]
    return best


def merge(sources: Sequence[Source]) -> dict[str, Any]:
    """The merged report's JSON: sources, columns, one table row per cell key without the
    device (each column's figures side by side) and every input cell, tagged by source."""
    cells = [{**c, "source": s.label} for s in sources for c in s.cells]
    seen: set[tuple[Any, ...]] = set()
    for c in cells:
        key = (c["source"], *(c[k] for k in KEY))
        if key in seen:
            raise SystemExit(f"{c['source']}: holds the cell {key[1:]} twice")
        seen.add(key)
    order = {s.label: i for i, s in enumerate(sources)}
    found = {Column(c["device"], c["source"]) for c in cells if c["framework"] != "echo"}
    columns = sorted(found, key=lambda col: (col.device != "cpu", col.device, order[col.source]))
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in cells:
        if c["framework"] == "echo":  # the floor is no framework's CPU or GPU figure
            continue
        key = tuple(c[k] for k in _ROW)
        row = rows.setdefault(key, {**dict(zip(_ROW, key, strict=True)), "target": c["target"]})
        row.setdefault("columns", {})[Column(c["device"], c["source"]).label] = _figures(c)
    table = []
    for key in sorted(rows):
        row = rows[key]
        row["columns"] = {
            col.label: row["columns"][col.label] for col in columns if col.label in row["columns"]
        }
        row["fastest_p50"] = _best(row, "p50_ms", lowest=True)
        row["most_samples_per_s"] = _best(row, "samples_per_s", lowest=False)
        table.append(row)
    column_info = []
    for col in columns:
        entries = [r["columns"][col.label] for r in table if col.label in r["columns"]]
        column_info.append({
            "label": col.label, "device": col.device, "source": col.source,
            "kind": "cpu" if col.device == "cpu" else "gpu",
            "measured": sum(_measured(e) for e in entries),
            "not_measured": sum(not _measured(e) for e in entries),
        })  # fmt: skip
    for c in cells:
        if c.get("result"):
            c["result"] = {
                **c["result"],
                "samples_per_s": c["batch"] * c["result"]["throughput_per_s"],
            }
    return {
        "sources": [{"label": s.label, "file": s.file, **s.run} for s in sources],
        "columns": column_info,
        "table": table,
        "cells": cells,
    }


def _num(value: Any, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _describe(source: dict[str, Any]) -> list[str]:
    m = source.get("machine") or {}
    lines = [f"### {source['label']}", ""]
    lines.append(
        f"From `{source['file']}`: host {m.get('host', '?')}; {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, {m.get('memory', '?')}, GPUs: "
        f"{', '.join(m.get('gpus') or ['?'])}; {m.get('platform', '?')}, "
        f"Python {m.get('python', '?')}."
    )
    if m.get("libraries"):
        lines.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".")
    elapsed = source.get("elapsed_s")
    took = f"; took {elapsed:.0f} s" if isinstance(elapsed, int | float) else ""
    lines.append(f"Started {source.get('started', '?')}{took}.")
    lines.append(f"Settings: {json.dumps(source.get('settings'))}.")
    probe = source.get("gpu_probe")
    if isinstance(probe, dict):
        lines.append(
            "GPU probe: " + "; ".join(f"{k}: {v or 'sees a GPU'}" for k, v in probe.items()) + "."
        )
    elif probe:
        lines.append(f"GPU probe: {probe}.")
    return [*lines, ""]


def _reasons(table: list[dict[str, Any]], label: str) -> list[str]:
    found = dict.fromkeys(
        f"{e['status']}: {e['reason']}" if e["reason"] else e["status"]
        for r in table
        if (e := r["columns"].get(label)) and not _measured(e)
    )
    return [f"- {reason}" for reason in found]


def _winner(best: dict[str, Any]) -> str:
    if not best:
        return "-"
    margin = f" by {best['margin']:.2f}x" if "margin" in best else ""
    return f"{best['column']}{margin}"


def _notes(row: dict[str, Any], shown: list[str]) -> str:
    notes = []
    for label in shown:
        e = row["columns"].get(label)
        if e is None:
            continue
        if e["status"] != "ok":
            notes.append(f"{label}: {e['status']}: {e['reason']}")
        elif e.get("client_saturated"):
            notes.append(f"{label}: client saturated: {e['client_saturated']}")
    return "; ".join(notes)


def _markdown(merged: dict[str, Any], plots: dict[str, Path], plot_note: str) -> str:
    table, columns = merged["table"], merged["columns"]
    shown = [c["label"] for c in columns if c["measured"]]
    lines = ["# twinserve load test: merged reports", ""]
    lines += [
        f"Merged from {len(merged['sources'])} report(s). Each column is one device on one host "
        "(`DEVICE @ HOST`, the hosts described under Sources): a cell two reports both hold, "
        "the CPU on two hosts say, is two columns. p50 in ms; req/s counts correct answers; "
        "samples/s is the batch times req/s. The fastest and the most samples/s compare the "
        "columns of a row (the runner-up's figure over the winner's).",
        "",
        "## Sources",
        "",
    ]
    for source in merged["sources"]:
        lines += _describe(source)
    lines += ["## Columns", "", "| column | device | host | measured | not measured |"]
    lines += ["|---|---|---|---|---|"]
    for c in columns:
        lines.append(
            f"| {c['label']} | {c['device']} | {c['source']} | {c['measured']} | "
            f"{c['not_measured']} |"
        )
    lines.append("")
    for c in columns:
        if not c["measured"]:
            lines += [f"`{c['label']}` measured nothing, so the tables leave it out:", ""]
            lines += [*_reasons(table, c["label"]), ""]
    lines += ["", *([f"{plot_note}.", ""] if plot_note else [])]
    header = "| batch | target | c | " + " | ".join(
        f"{label} {figure}" for label in shown for figure in ("p50", "req/s", "samples/s")
    )
    header += " | fastest (p50) | most samples/s | notes |"
    rule = "|---" * (3 + 3 * len(shown) + 3) + "|"
    for model in dict.fromkeys(r["model"] for r in table):
        lines += [f"## {model}: CPU vs GPU", "", header, rule]
        for r in (r for r in table if r["model"] == model):
            figures = []
            for label in shown:
                e = r["columns"].get(label, {"status": "not run", "reason": ""})
                if _measured(e):
                    figures += [
                        _num(e["p50_ms"], 3), _num(e["throughput_per_s"], 0),
                        _num(e["samples_per_s"], 0),
                    ]  # fmt: skip
                else:
                    figures += ["n/a" if e["status"] != "not run" else "not run", "", ""]
            lines.append(
                f"| {r['batch']} | {r['target']} | {r['concurrency']} | "
                + " | ".join(figures)
                + f" | {_winner(r['fastest_p50'])} | {_winner(r['most_samples_per_s'])} | "
                f"{_notes(r, shown)} |"
            )
        lines.append("")
        if model in plots:
            lines += [f"![{plots[model].stem}]({plots[model].name})", ""]
    return "\n".join(lines)


def _series(
    rows: list[dict[str, Any]], shown: list[str]
) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """Per (column, target): (batch, p50 at the lowest concurrency measured, the most
    samples/s at any concurrency): latency unloaded, throughput at its best."""
    points: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for r in sorted(rows, key=lambda r: (r["batch"], r["concurrency"])):
        for label in shown:
            e = r["columns"].get(label)
            if e is None or not _competes(e):
                continue
            by_batch = points.setdefault((label, r["target"]), {})
            p50, samples = by_batch.get(r["batch"], (e["p50_ms"], 0.0))
            by_batch[r["batch"]] = (p50, max(samples, e["samples_per_s"]))
    return {
        key: [(batch, p50, samples) for batch, (p50, samples) in sorted(b.items())]
        for key, b in points.items()
    }


def _curves(merged: dict[str, Any], shown: list[str]) -> Curves:
    curves: Curves = {}
    for model in dict.fromkeys(r["model"] for r in merged["table"]):
        rows = [r for r in merged["table"] if r["model"] == model]
        # The gateway adds the same hop to both devices: direct shows them apart.
        kind = "direct" if any(r["path"] == "direct" for r in rows) else "gateway"
        curves[model] = (kind, _series([r for r in rows if r["path"] == kind], shown))
    return curves


def write_merged(sources: Sequence[Source], out: Path) -> tuple[list[Path], str]:
    """Writes report.json, report.md and the plots under `out`; returns the files written
    and the note on plots skipped ('' when none was)."""
    merged = merge(sources)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(merged, indent=2, default=str, allow_nan=True))
    shown = [c["label"] for c in merged["columns"] if c["measured"]]
    plots, note = plot_curves(_curves(merged, shown), shown, out)
    (out / "report.md").write_text(_markdown(merged, plots, note))
    return [out / "report.json", out / "report.md", *plots.values()], note


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT",
                   help="a report's directory (holding report.json) or its JSON file")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("loadtest-merged"))
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    target = (args.out / "report.json").resolve()
    for path in args.reports:
        if (path / "report.json" if path.is_dir() else path).resolve() == target:
            raise SystemExit(f"--out {args.out} would overwrite the report {path} it merges")
    sources = load(args.reports)
    written, note = write_merged(sources, args.out)
    for source in sources:
        print(f"{source.label}: {len(source.cells)} cells from {source.file}")
    if note:
        print(note)
    print("merged report: " + ", ".join(str(p) for p in written))
