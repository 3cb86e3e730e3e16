"""The merged report's plot: per model, p50 and samples/s against the batch, one line per
column (device @ host) and target. matplotlib is optional: a GPU host's kit need not carry it,
and the merge's tables do not need it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["Curves", "plot_curves"]

# Per model: the path drawn ("direct", or "gateway" where no direct cell ran), and per
# (column, target) its points (batch, p50 ms at the lowest concurrency, best samples/s).
Curves = dict[str, tuple[str, dict[tuple[str, str], list[tuple[int, float, float]]]]]


def _plot(
    title: str,
    kind: str,
    series: dict[tuple[str, str], list[tuple[int, float, float]]],
    columns: list[str],
    path: Path,
) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional: see plot_curves)

    targets = sorted({target for _, target in series})
    styles, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v", "P")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for (label, target), points in sorted(series.items()):
        i = targets.index(target)
        # The color tells the column (device @ host) apart, the line style the target.
        style = {
            "color": plt.get_cmap("tab10")(columns.index(label) % 10),
            "linestyle": styles[i % len(styles)], "marker": markers[i % len(markers)],
            "label": f"{label}: {target.removesuffix(' ' + kind)}",
        }  # fmt: skip
        batches = [p[0] for p in points]
        left.plot(batches, [p[1] for p in points], **style)
        right.plot(batches, [p[2] for p in points], **style)
    batches = sorted({p[0] for points in series.values() for p in points})
    for ax, ylabel in (
        (left, "p50 latency (ms), lowest concurrency"),
        (right, "samples / s, best concurrency"),
    ):
        if len(batches) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])  # the batches run, not powers of 2
        ax.set_xticks([], minor=True)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{title}: CPU vs GPU ({kind})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: Curves, columns: list[str], out: Path) -> tuple[dict[str, Path], str]:
    """One PNG per model with points; returns them by model and '', or none and the note
    saying why (matplotlib missing)."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: see the module's docstring)
    except ImportError:
        return {}, "Plots skipped: matplotlib is not installed"
    matplotlib.use("Agg")  # files only: no display on a server
    plots = {}
    for model, (kind, series) in curves.items():
        if series:
            plots[model] = out / f"cpu-vs-gpu-{model}.png"
            _plot(model, kind, series, columns, plots[model])
    return plots, ""
