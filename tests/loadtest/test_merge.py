"""Reports that combine: a CPU host's and a GPU host's reports, written by the real report
code (write_report on synthetic outcomes, so a change to the report's format breaks these
tests), merged into one CPU-vs-GPU table and plot with both hosts' descriptions; samples/s
beside req/s in both reports; `python -m loadtest merge` and the matrix's entry point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

import loadtest.__main__ as entry
import loadtest.report as single_report
from loadtest import cli
from loadtest.matrix import Cell, Outcome, Target
from loadtest.merge import load, merge, write_merged
from loadtest.merge import main as merge_main
from loadtest.report import machine, write_report
from loadtest.result import LoadResult
from loadtest.worker import new_histogram

ROOT = Path(__file__).resolve().parents[2]
H200 = "NVIDIA H200, 143771 MiB, 570.86.15"
NO_GPU = "no NVIDIA GPU on this machine (no /dev/nvidia0)"


def _result(p50_ms: float, ok: int, concurrency: int) -> LoadResult:
    """Every answer took p50_ms; `ok` answers in a 2 s window: ok / 2 req/s."""
    latency = new_histogram()
    for _ in range(10):  # the percentiles need a few answers; req/s is ok / window_s
        latency.record_value(round(p50_ms * 1000))
    return LoadResult(mode="closed", concurrency=concurrency, rate=0.0, latency=latency,
                      send_lag=new_histogram(), ok=ok, window_s=2.0, client_cpu=[0.2])  # fmt: skip


def _outcomes(device: str, gpu: bool, slow: float) -> list[Outcome]:
    """mlp at batch 1 and 32, PyTorch native direct and through the gateway, at c=1 and 4:
    measured on the CPU (p50 scaled by `slow`), on `device` where `gpu`, else not available
    there with the reason a CPU host gives; TensorFlow on the GPU not available either way."""
    outcomes = []
    for batch in (1, 32):
        for path in ("direct", "gateway"):
            for c in (1, 4):
                cpu = Target("mlp", batch, "cpu", "pytorch", "native", path)
                cuda = Target("mlp", batch, device, "pytorch", "native", path)
                tf = Target("mlp", batch, device, "tensorflow", "native", path)
                p50 = slow * (1 + batch / 8)
                outcomes.append(Outcome(Cell(cpu, c), "ok", result=_result(p50, 1000 * c, c)))
                if gpu:
                    fast = _result(0.8, 2000 * c, c)
                    outcomes.append(Outcome(Cell(cuda, c), "ok", result=fast))
                else:
                    outcomes.append(Outcome(Cell(cuda, c), "not available", NO_GPU))
                outcomes.append(Outcome(Cell(tf, c), "not available", "no TensorFlow here"))
    echo = Target("echo", 1, "cpu", "echo", "echo", "direct")
    outcomes.append(Outcome(Cell(echo, 1), "ok", result=_result(0.1, 9000, 1)))
    return outcomes


def _run(host: str, gpus: list[str]) -> dict[str, Any]:
    return {
        "started": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 12.0,
        "settings": {"models": "mlp", "batches": "1,32", "devices": "cpu,cuda", "mode": "local"},
        "machine": {**machine(), "host": host, "gpus": gpus},
        "gpu_probe": {"torch": None if gpus != ["none"] else NO_GPU},
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    write_report(_outcomes("cuda", gpu=False, slow=1.0), _run("cpu-box", ["none"]), root / "cpu")
    write_report(_outcomes("cuda", gpu=True, slow=1.5), _run("gpu-box", [H200]), root / "gpu")
    return {"cpu": root / "cpu", "gpu": root / "gpu"}


def _row(merged: dict[str, Any], batch: int, path: str, c: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        r
        for r in merged["table"]
        if (r["batch"], r["path"], r["concurrency"], r["framework"]) == (batch, path, c, "pytorch")
    ]
    assert len(rows) == 1
    return rows[0]


def test_the_single_report_gives_samples_per_s_beside_req_per_s(reports: dict[str, Path]) -> None:
    report = json.loads((reports["gpu"] / "report.json").read_text())
    measured = [c for c in report["cells"] if c["result"]]
    assert measured
    for cell in measured:
        result = cell["result"]
        assert result["samples_per_s"] == cell["batch"] * result["throughput_per_s"]
    assert all(c["result"] is None for c in report["cells"] if c["status"] != "ok")
    with (reports["gpu"] / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert header[header.index("throughput_per_s") + 1] == "samples_per_s"
    big = [r for r in rows if r["batch"] == "32" and r["device"] == "cuda" and r["status"] == "ok"]
    assert big and all(float(r["samples_per_s"]) == 32 * float(r["throughput_per_s"]) for r in big)
    markdown = (reports["gpu"] / "report.md").read_text()
    assert "| req/s | samples/s |" in markdown
    # c=4 on the GPU at batch 32: 8000 answers in 2 s, 4,000 req/s, 128,000 samples/s.
    assert "| 4,000 | 128,000 |" in markdown
    # A cell that did not run still fills every column of its row.
    (line,) = [
        line for line in markdown.splitlines() if line.startswith("| tensorflow/native direct | 1 ")
    ][:1]
    header_line = next(line for line in markdown.splitlines() if line.startswith("| target |"))
    assert line.count("|") == header_line.count("|")


def test_the_single_report_says_when_plots_were_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(single_report, "unavailable", lambda: "plots skipped: no matplotlib")
    monkeypatch.setattr(single_report, "plot_all", lambda outcomes, out: [])
    write_report(_outcomes("cuda", gpu=False, slow=1.0), _run("cpu-box", ["none"]), tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "Plots skipped: no matplotlib." in markdown and "| samples/s |" in markdown


def test_a_cpu_and_a_gpu_host_merge_into_one_table_keeping_both(reports: dict[str, Path]) -> None:
    sources = load([reports["cpu"], reports["gpu"] / "report.json"])
    assert [s.label for s in sources] == ["cpu-box", "gpu-box"]
    merged = merge(sources)

    hosts = {s["label"]: s for s in merged["sources"]}
    assert hosts["gpu-box"]["machine"]["gpus"] == [H200]
    assert hosts["cpu-box"]["machine"]["gpus"] == ["none"]
    assert hosts["cpu-box"]["file"] == str(reports["cpu"] / "report.json")
    assert hosts["gpu-box"]["settings"]["models"] == "mlp"
    # Every input cell is kept, tagged by where it came from.
    per_report = len(_outcomes("cuda", gpu=True, slow=1.0))
    assert len(merged["cells"]) == 2 * per_report
    assert {c["source"] for c in merged["cells"]} == {"cpu-box", "gpu-box"}

    columns = {c["label"]: c for c in merged["columns"]}
    assert list(columns) == ["cpu @ cpu-box", "cpu @ gpu-box", "cuda @ cpu-box", "cuda @ gpu-box"]
    assert columns["cuda @ gpu-box"]["kind"] == "gpu" and columns["cpu @ cpu-box"]["kind"] == "cpu"
    assert columns["cuda @ cpu-box"]["measured"] == 0
    assert columns["cpu @ cpu-box"]["measured"] == 8 and columns["cuda @ gpu-box"]["measured"] == 8

    # The CPU on both hosts: two columns, each host's own figure.
    row = _row(merged, 32, "direct", 4)
    assert row["columns"]["cpu @ cpu-box"]["p50_ms"] == pytest.approx(5.0, rel=0.01)
    assert row["columns"]["cpu @ gpu-box"]["p50_ms"] == pytest.approx(7.5, rel=0.01)
    assert row["columns"]["cuda @ cpu-box"]["status"] == "not available"
    gpu = row["columns"]["cuda @ gpu-box"]
    assert gpu["throughput_per_s"] == 4000 and gpu["samples_per_s"] == 32 * 4000
    assert row["fastest_p50"]["column"] == "cuda @ gpu-box"
    assert row["fastest_p50"]["runner_up"] == "cpu @ cpu-box"
    assert row["fastest_p50"]["margin"] == pytest.approx(5.0 / 0.8, rel=0.01)
    assert row["most_samples_per_s"]["column"] == "cuda @ gpu-box"
    assert row["most_samples_per_s"]["margin"] == pytest.approx(2.0)
    # The echo floor is no framework's CPU or GPU figure: in the cells, not the table.
    assert all(r["framework"] != "echo" for r in merged["table"])
    assert any(c["framework"] == "echo" for c in merged["cells"])


def test_the_merged_report_says_where_each_column_came_from(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    written, note = write_merged(load([reports["cpu"], reports["gpu"]]), tmp_path)
    assert note == ""
    markdown = (tmp_path / "report.md").read_text()
    assert "### cpu-box" in markdown and "### gpu-box" in markdown
    assert H200 in markdown and "host gpu-box" in markdown
    assert "| cuda @ gpu-box | cuda | gpu-box | 8 | 8 |" in markdown
    assert "cpu @ cpu-box p50 | cpu @ cpu-box req/s | cpu @ cpu-box samples/s" in markdown
    assert "cuda @ gpu-box samples/s" in markdown
    # A column that measured nothing is named with its reason, not drawn as a column of n/a.
    assert "cuda @ cpu-box p50" not in markdown
    assert "`cuda @ cpu-box` measured nothing" in markdown
    assert f"- not available: {NO_GPU}\n" in markdown
    # batch 32, gateway, c=4 on the GPU host's GPU: 4,000 req/s, 128,000 samples/s.
    (line,) = [
        line
        for line in markdown.splitlines()
        if line.startswith("| 32 | pytorch/native gateway | 4 |")
    ]
    assert "| 0.800 | 4,000 | 128,000 |" in line and "| cuda @ gpu-box by 6.25x |" in line
    header = next(line for line in markdown.splitlines() if line.startswith("| batch |"))
    assert line.count("|") == header.count("|")

    plot = tmp_path / "cpu-vs-gpu-mlp.png"
    assert plot in written and matplotlib.image.imread(plot).shape[0] > 100
    assert "](cpu-vs-gpu-mlp.png)" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["sources"][1]["label"] == "gpu-box"


def test_one_host_twice_stays_two_sources(reports: dict[str, Path]) -> None:
    merged = merge(load([reports["cpu"], reports["cpu"]]))
    assert [s["label"] for s in merged["sources"]] == ["cpu-box", "cpu-box#2"]
    row = _row(merged, 1, "direct", 1)
    assert {"cpu @ cpu-box", "cpu @ cpu-box#2"} <= set(row["columns"])


def test_a_merged_report_merges_again(reports: dict[str, Path], tmp_path: Path) -> None:
    write_merged(load([reports["cpu"]]), tmp_path / "first")
    again = merge(load([tmp_path / "first", reports["gpu"]]))
    once = merge(load([reports["cpu"], reports["gpu"]]))
    assert again["sources"] == once["sources"]
    assert again["table"] == once["table"]
    assert len(again["cells"]) == len(once["cells"])


def test_plots_are_skipped_with_a_note_without_matplotlib(
    reports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    written, note = write_merged(load([reports["cpu"], reports["gpu"]]), tmp_path)
    assert "matplotlib is not installed" in note
    assert not list(tmp_path.glob("*.png")) and len(written) == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "Plots skipped: matplotlib is not installed." in markdown
    assert "cuda @ gpu-box samples/s" in markdown


def test_what_is_not_a_report_is_refused(reports: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a load-test report"):
        load([tmp_path / "other.json"])
    with pytest.raises(SystemExit, match="cannot read"):
        load([tmp_path / "missing"])
    report = json.loads((reports["cpu"] / "report.json").read_text())
    report["cells"].append(report["cells"][0])
    (tmp_path / "twice.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="twice"):
        merge(load([tmp_path / "twice.json"]))
    with pytest.raises(SystemExit, match="would overwrite"):
        merge_main([str(reports["cpu"]), "--out", str(reports["cpu"])])


def test_python_m_loadtest_merge(reports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    args = [sys.executable, "-m", "loadtest", "merge", str(reports["cpu"]), str(reports["gpu"])]
    done = subprocess.run([*args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cpu-box: 25 cells" in done.stdout and "gpu-box: 25 cells" in done.stdout
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "cpu-vs-gpu-mlp.png"}
    assert "cuda @ gpu-box" in (out / "report.md").read_text()


def test_without_a_subcommand_the_matrix_runs_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[Any] = []
    monkeypatch.setattr(cli, "main", given.append)
    entry.main(["--models", "mlp", "--devices", "cpu"])
    monkeypatch.setattr(sys, "argv", ["loadtest", "--concurrency", "1"])
    entry.main()
    # The matrix gets its arguments as given, and None (its own sys.argv) when none are.
    assert given == [["--models", "mlp", "--devices", "cpu"], None]
    # `python -m loadtest` is still the matrix's command line, its help unchanged.
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run([sys.executable, "-m", "loadtest", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    monkeypatch.setenv("COLUMNS", "100")
    assert done.stdout == cli._parser().format_help()
