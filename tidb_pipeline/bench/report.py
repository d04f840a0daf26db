"""The benchmark's output: one table of measures (each beside its baseline), machine facts, BENCHMARKS.md, charts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Every figure a `tidb-pipeline bench` run reports; the smoke test checks that a run reports each of them.
FIGURES = (
    "landing throughput",
    "merge scaling",
    "recipe side by side",
    "end-to-end freshness",
    "sensor tick",
    "definitions load",
    "lab up",
    "lab change feed",
    "cost vs retention",
)
# Figures measured only when asked for (`--only production`: about 15 minutes of go-tpc and the real daemon).
ON_REQUEST = ("freshness at production rates",)
BEGIN, END = "<!-- bench:begin (written by `tidb-pipeline bench`) -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Measure:
    """One reported number, beside the baseline measured in the same run."""

    figure: str  # one of FIGURES
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


@dataclass(frozen=True)
class Machine:
    cpus: int
    cpu_model: str
    memory_gib: float
    load_before: str
    load_after: str
    date: str
    commit: str
    python: str


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else "unknown"


def _memory_gib() -> float:
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(found.group(1)) / 1024**2 if found else 0.0
    except OSError:
        return 0.0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine(load_before: str) -> Machine:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], check=False).stdout.strip()
    return Machine(os.cpu_count() or 1, _cpu_model(), round(_memory_gib(), 1), load_before, load_average(),
                   dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit or "unknown",
                   platform.python_version())


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}" if value else "0"
    return f"{text} {unit}".strip()


def table(measures: Sequence[Measure]) -> list[list[str]]:
    """Rows of the printed / markdown table, header first."""
    rows = [["figure", "measure", "value", "baseline (same run)", "ratio", "target", "met"]]
    for m in measures:
        baseline = f"{m.baseline_name}: {_fmt(m.baseline, m.unit)}" if m.baseline_name else ""
        ratio = f"{m.ratio:.2f}x" if m.ratio is not None else ""
        met = "" if m.met is None else ("yes" if m.met else "NO")
        rows.append([m.figure, m.name, _fmt(m.value, m.unit), baseline, ratio, m.target, met])
    return rows


def text_table(measures: Sequence[Measure]) -> str:
    rows = table(measures)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(measures: Sequence[Measure]) -> str:
    rows = table(measures)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def generated_section(measures: Sequence[Measure], m: Machine, command: str, charts: Sequence[Path],
                      details: Sequence[str], base: Path) -> str:
    lines = [
        BEGIN,
        f"Run: `{command}` on {m.date}, commit `{m.commit}`, Python {m.python}.",
        "",
        f"Machine: {m.cpus} CPUs ({m.cpu_model}), {m.memory_gib} GiB memory; load average (1/5/15 min) "
        f"{m.load_before} at the start and {m.load_after} at the end (the machine is shared).",
        "",
        markdown_table(measures),
        "",
    ]
    notes = [f"- {x.figure} / {x.name}: {x.note}" for x in measures if x.note]
    if notes:
        lines += ["Notes from the run:", "", *notes, ""]
    if details:
        lines += ["Details:", "", *details, ""]
    for chart in charts:
        rel = os.path.relpath(chart, base)
        lines.append(f"![{chart.stem}]({rel})")
    lines += ["", END]
    return "\n".join(lines)


def write_markdown(path: Path, section: str, title: str = "# Benchmarks\n") -> None:
    """Replace the generated section of `path` (hand-written text around it is kept); create if missing."""
    old = path.read_text() if path.exists() else title + "\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + section + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


# --- charts -----------------------------------------------------------------------------------------


def charts(measures: Sequence[Measure], folder: Path, extra: dict[str, Any]) -> list[Path]:
    """PNG charts (matplotlib, headless); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    by = {}
    for m in measures:
        by.setdefault(m.figure, []).append(m)

    if land := by.get("landing throughput"):
        m = land[0]
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        bars = ax.bar(["raw consume + decode", "builtin landing"], [m.baseline or 0, m.value],
                      color=["#999999", "#2b6cb0"])
        ax.bar_label(bars, fmt="{:,.0f}")
        ax.axhline(100_000, ls="--", c="#c53030", lw=1, label="target 100k/s")
        ax.set_ylabel("records/s")
        ax.set_title("Landing throughput (same records, same readers)")
        ax.legend(loc="lower right")
        save(fig, "landing_throughput")

    if points := extra.get("scaling"):
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for prune, label in ((False, "no prune"), (True, "key-range prune")):
            xs = [p.size for p in points if p.prune == prune]
            ys = [p.seconds for p in points if p.prune == prune]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("replica rows")
        ax.set_ylabel("seconds per batch")
        ax.set_title(f"Merge of one {points[0].landing_rows:,}-change batch")
        ax.set_ylim(bottom=0)
        ax.legend()
        save(fig, "merge_scaling")

    if (cmp := extra.get("recipe")) is not None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = ["ours", "recipe as published", "recipe, deletes fixed"]
        secs = [cmp.ours_seconds, cmp.recipe_seconds, cmp.fixed_seconds]
        diffs = [cmp.ours, cmp.recipe, cmp.fixed]
        bars = ax.bar(names, secs, color=["#2b6cb0" if d.equal else "#c53030" for d in diffs])
        ax.bar_label(bars, labels=["equals source" if d.equal else
                                   f"{len(d.missing) + len(d.extra) + len(d.different) + len(d.duplicated)} keys wrong"
                                   for d in diffs])
        ax.set_ylabel(f"seconds, {cmp.rounds} runs")
        ax.set_title("Same landing rows: our MERGE vs PingCAP's recipe")
        save(fig, "recipe_side_by_side")

    if (fresh := extra.get("freshness")) is not None and fresh.latencies:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        ax.hist(fresh.latencies, bins=40, color="#2b6cb0")
        for q, v in (("p50", fresh.p50), ("p95", fresh.p95)):
            ax.axvline(v, ls=":", c="black", lw=1)
            ax.text(v, ax.get_ylim()[1] * 0.9, f" {q} {v:.1f}s", fontsize=8)
        ax.axvline(30, ls="--", c="#c53030", lw=1, label="target p95 30 s")
        ax.set_xlabel("seconds from source commit to merge (MERGED_AT)")
        ax.set_ylabel("rows")
        ax.set_title("End-to-end freshness under TPC-C")
        ax.legend()
        save(fig, "freshness")

    if windows := extra.get("production"):
        from tidb_pipeline.bench.production import charts as production_charts

        out.append(production_charts(windows, folder))

    control = [m for f in ("sensor tick", "definitions load", "lab up") for m in by.get(f, [])]
    if control:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        labels, values, bases = [], [], []
        for m in control:
            scale = 1000.0 if m.unit == "s" else 1.0
            labels.append(m.figure)  # the full measure names are in the table
            values.append(m.value * scale)
            bases.append((m.baseline or 0) * scale)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], values, width=0.4, label="measure", color="#2b6cb0")
        ax.bar([x + 0.2 for x in xs], bases, width=0.4, label="baseline", color="#999999")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("milliseconds")
        ax.set_title("Control plane")
        ax.legend()
        save(fig, "control_plane")
    return out
