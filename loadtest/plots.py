"""The report's PNG plots (matplotlib, no display needed). Without matplotlib (the GPU host's
kit leaves it out: ~20 MB of wheels per Python) there are none, and `unavailable()` says so
for the report; everything else in the report is unaffected."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from loadtest.matrix import RUNTIMES, Outcome

try:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display in CI or a container
    import matplotlib.pyplot as plt
except ImportError as exc:
    _MISSING: str | None = f"plots skipped: matplotlib is not installed ({exc})"
else:
    _MISSING = None

__all__ = ["plot_all", "unavailable"]

logger = logging.getLogger(__name__)

# Percentiles drawn on a "nines" axis: x = 1 / (1 - p), log scale.
_PERCENTILES = np.array([50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99])
_TICKS = [50, 90, 99, 99.9, 99.99]


def _color(label: str) -> tuple[float, ...]:
    """One color per framework/runtime (direct and gateway share it; the line style differs),
    from a 20-color map so a dozen targets stay apart."""
    names = ["echo", *(f"{f}/{r}" for f, runtimes in RUNTIMES.items() for r in runtimes)]
    key = label.split(" ", maxsplit=1)[0]
    index = names.index(key) if key in names else len(names)
    return tuple(plt.get_cmap("tab10")(index % 10))


def _good(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.result is not None and o.result.ok]


def _latency_curves(outcomes: list[Outcome], title: str, path: Path) -> None:
    levels = sorted({o.cell.concurrency for o in outcomes})
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 4.5), squeeze=False)
    x = 1 / (1 - _PERCENTILES / 100)
    for ax, level in zip(axes[0], levels, strict=True):
        for o in outcomes:
            if o.cell.concurrency != level or o.result is None:
                continue
            y = [o.result.percentile_ms(float(p)) for p in _PERCENTILES]
            style = "--" if o.cell.target.path == "gateway" else "-"
            label = o.cell.target.label
            ax.plot(x, y, style, marker=".", label=label, color=_color(label))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1 / (1 - p / 100) for p in _TICKS], [f"p{p:g}" for p in _TICKS])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"concurrency {level}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _throughput(outcomes: list[Outcome], title: str, path: Path) -> None:
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for o in outcomes:
        if o.result is not None:
            lines[o.cell.target.label].append(
                (o.cell.concurrency, o.result.throughput, o.result.percentile_ms(50))
            )
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, points in sorted(lines.items()):
        points.sort()
        c = [p[0] for p in points]
        style = "--" if label.endswith("gateway") else "-"
        color = _color(label)
        left.plot(c, [p[1] for p in points], style, marker="o", label=label, color=color)
        right.plot(c, [p[2] for p in points], style, marker="o", label=label, color=color)
    for ax, ylabel in ((left, "correct answers / s"), (right, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (calls in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cpu_gpu(outcomes: list[Outcome], model: str, path: Path) -> None:
    """Grouped bars per batch size: p50 on CPU and on GPU for every direct target at the
    lowest concurrency; a GPU cell that did not run is drawn as an 'n/a' mark."""
    direct = [
        o for o in outcomes if o.cell.target.path == "direct" and o.cell.target.framework != "echo"
    ]
    if not direct:
        return
    level = min(o.cell.concurrency for o in direct)
    batches = sorted({o.cell.target.batch for o in direct})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        cells = {
            (o.cell.target.label, "cpu" if o.cell.target.device == "cpu" else "gpu"): o
            for o in direct
            if o.cell.target.batch == batch and o.cell.concurrency == level
        }
        labels = sorted({label for label, _ in cells})
        x = np.arange(len(labels))
        for offset, kind in ((-0.2, "cpu"), (0.2, "gpu")):
            for i, label in enumerate(labels):
                o = cells.get((label, kind))
                if o is not None and o.result is not None and o.result.ok:
                    ax.bar(
                        x[i] + offset,
                        o.result.percentile_ms(50),
                        0.4,
                        color="tab:blue" if kind == "cpu" else "tab:green",
                    )
                else:
                    ax.text(
                        x[i] + offset,
                        0,
                        "n/a",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        rotation=90,
                        color="tab:red",
                    )
        ax.set_xticks(
            x,
            [label.replace(" direct", "") for label in labels],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_ylabel(f"p50 latency (ms), concurrency {level}")
        ax.set_title(f"{model}, batch {batch}: CPU (blue) vs GPU (green)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def unavailable() -> str | None:
    """Why this environment draws no plots (a note for the report), or None."""
    return _MISSING


def plot_all(outcomes: list[Outcome], out: Path) -> list[Path]:
    """Writes every plot under `out`; returns their paths: none without matplotlib (logged
    once per report; `unavailable()` gives the note)."""
    if _MISSING is not None:
        logger.warning("%s", _MISSING)
        return []
    written = []
    groups: dict[tuple[str, int, str], list[Outcome]] = defaultdict(list)
    for o in _good(outcomes):
        t = o.cell.target
        groups[(t.model, t.batch, t.device)].append(o)
    for (model, batch, device), members in sorted(groups.items()):
        title = f"{model}, batch {batch}, {device}"
        stem = f"{model}-b{batch}-{device.replace(':', '')}"
        for name, draw in (("latency", _latency_curves), ("throughput", _throughput)):
            path = out / f"{name}-{stem}.png"
            draw(members, title, path)
            written.append(path)
    for model in sorted({o.cell.target.model for o in outcomes}):
        path = out / f"cpu-vs-gpu-{model}.png"
        _cpu_gpu([o for o in outcomes if o.cell.target.model == model], model, path)
        if path.exists():
            written.append(path)
    return written
