"""One task's compression results side by side: a table (markdown + CSV) and the size-vs-metric and
latency-vs-metric plots, logged as an MLflow run `compress-report` in the task's experiment.

It reads the `summary.json` every compress stage writes under artifacts/compressed/<task>/; the parents'
numbers are the ones each compress stage measured in its own process (`parent/...`). The headline metric
and the latency come from the task's recipe (`results.metric`, `results.latency`, via `report.*`).

Speed-ups are printed with their interval, and as "no difference" where the interval contains 1.0
(`speedup_b*_significant` 0): a ratio of two latencies that the measurement cannot tell apart is not a
speed-up. The `onnx` column says whether the ONNX model was within its tolerance; one outside it is
printed as such, never dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from dlzoo.config import require_keys
from dlzoo.io import read_json, write_json
from dlzoo.errors import DataError
from dlzoo.plotting import plt, save_figure
from dlzoo.tracking import start_run

log = logging.getLogger(__name__)

SPEEDUPS = ("speedup_b1", "speedup_b32")
INTERVAL = ("_lo", "_hi", "_significant")
COLUMNS = ["size_mb", "size_ratio", "size_mb_torch_save", "num_params", "nonzero_params", "macs", "macs_ratio",
           "latency_ms_b1", "latency_ms_b1_iqr", "latency_ms_b32", "latency_ms_b32_iqr",
           *[s + suffix for s in SPEEDUPS for suffix in ("", *INTERVAL)],
           "test/ms_per_sentence_greedy", "decode_speedup_greedy", "compress_seconds"]


def onnx_cell(summary: dict) -> str:
    """The ONNX check in words: ok / OUTSIDE TOLERANCE with the measured difference and the bound, the
    export failure, or skipped."""
    status, m = summary.get("onnx_export", "skipped"), summary["metrics"]
    if "onnx/within_tolerance" not in m:
        return status if status in ("skipped", "ok") else status.split(":", 1)[0] + ": " + status.split(":", 1)[-1].strip()[:120]
    verdict = "ok" if m["onnx/within_tolerance"] else "OUTSIDE TOLERANCE"
    if "onnx/tolerance_steps" in m:
        return f"{verdict} ({m['onnx/max_diff_steps']:.2f} of {m['onnx/tolerance_steps']:g} steps)"
    return f"{verdict} ({m['onnx/max_abs_diff']:.2g} vs atol {m['onnx/atol']:.2g})"


def collect(compressed_dir: str | Path, metric: str, latency: str | None = None) -> pd.DataFrame:
    """One row per parent family (method `-`) and per compressed model."""
    columns = COLUMNS + ([latency] if latency and latency not in COLUMNS else [])
    summaries = [read_json(p) for p in sorted(Path(compressed_dir).glob("*/summary.json"))]
    if not summaries:
        raise DataError(f"no compressed models in {compressed_dir}/: run the `compress_...` stages first (`dvc repro`)")
    rows, parents = [], {}
    for s in summaries:
        m = s["metrics"]
        parents.setdefault(s["family"], {"family": s["family"], "method": "-", metric: m.get(f"parent/{metric}"),
                                         **{c: m.get(f"parent/{c}") for c in columns}})
        row = {"family": s["family"], "method": s["method"], metric: m.get(metric),
               f"{metric}_change": m.get(metric, float("nan")) - m.get(f"parent/{metric}", float("nan")),
               **{c: m.get(c) for c in columns}}
        row["compress_seconds"] = s.get("compress_seconds")
        row["onnx"] = onnx_cell(s)
        if f"{metric}_std" in m:
            row[f"{metric}_std"] = m[f"{metric}_std"]
        rows.append(row)
    for p in parents.values():
        for ratio in ("size_ratio", "macs_ratio", *SPEEDUPS, "decode_speedup_greedy"):
            if any(r.get(ratio) is not None for r in rows):  # a parent is 1x of itself where ratios exist
                p[ratio] = 1.0
        p["compress_seconds"] = None
    df = pd.DataFrame([*parents.values(), *rows])
    df = df.dropna(axis="columns", how="all")  # e.g. MACs for translation, decoding speed for digits
    return df.sort_values(["family", "method"], key=lambda c: c.where(c != "-", "")).reset_index(drop=True)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and pd.isna(v))


def speedup_cell(row: dict, name: str) -> str:
    """'2.75 (2.61-2.90)' for a speed-up whose interval excludes 1.0, 'no difference (0.95-1.04)' for one
    whose interval contains it; a ratio without an interval (the parent's 1) as it is."""
    value, significant = row.get(name), row.get(f"{name}_significant")
    if _missing(value):
        return ""
    if _missing(significant):
        return f"{value:.3g}"
    interval = f"({row[f'{name}_lo']:.3g}-{row[f'{name}_hi']:.3g})"
    return f"{value:.3g} {interval}" if significant else f"no difference {interval}"


def markdown_table(df: pd.DataFrame) -> str:
    """The table as markdown: each speed-up and its interval in one cell (`speedup_cell`)."""
    def cell(v) -> str:
        if _missing(v):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = [c for c in df.columns if not any(c == s + suffix for s in SPEEDUPS for suffix in INTERVAL)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in df.to_dict("records"):
        lines.append("| " + " | ".join(speedup_cell(row, c) if c in SPEEDUPS else cell(row[c]) for c in shown) + " |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(df: pd.DataFrame, x: str, metric: str, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (family, group) in enumerate(df.groupby("family")):
        color = f"C{i % 10}"
        for _, row in group.iterrows():
            if pd.isna(row[x]) or pd.isna(row[metric]):
                continue
            parent = row["method"] == "-"
            ax.scatter(row[x], row[metric], color=color, marker="*" if parent else "o", s=140 if parent else 40,
                       label=family if parent else None)
            ax.annotate(family if parent else row["method"], (row[x], row[metric]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="parent (star)")
    return save_figure(fig, path)


def compress_report(cfg: DictConfig) -> dict:
    """The report of `cfg.task` (set by the family recipe named with `experiment=`), on the headline metric
    and latency its recipe declares (`results.*`, through `report.metric` / `report.latency`)."""
    require_keys(cfg, "task", "report.metric")
    task, metric, latency = cfg.task, cfg.report.metric, cfg.report.get("latency")
    df = collect(Path(cfg.report.compressed_root) / task, metric, latency)
    out = Path(cfg.report.out_dir) / task / "compress"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "compression.csv", index=False)
    (out / "compression.md").write_text(markdown_table(df))
    files = [out / "compression.csv", out / "compression.md",
             plot_tradeoff(df, "size_mb", metric, out / "size_vs_metric.png", f"{task}: size on disk vs {metric}")]
    if latency and latency in df.columns:  # a task without a latency metric gets no latency plot
        files.append(plot_tradeoff(df, latency, metric, out / "latency_vs_metric.png", f"{task}: CPU latency ({latency}) vs {metric}"))
    total = float(df["compress_seconds"].fillna(0).sum())
    with start_run(cfg, "compress-report", run_name="compress-report", models=str(len(df))):
        import mlflow

        mlflow.log_metric("compress_seconds_total", total)
        for f in files:
            mlflow.log_artifact(str(f), "compression")
    summary = {"task": task, "models": int(len(df)), "compress_seconds_total": total}
    write_json(out / "summary.json", summary)
    log.info("compression report for %s: %d rows, stages took %.0f s in all\n%s", task, len(df), total,
             (out / "compression.md").read_text())
    return summary
