"""One task's compression results side by side: a table (markdown + CSV) and the size-vs-metric and
latency-vs-metric plots, logged as an MLflow run `compress-report` in the task's experiment.

It reads the `summary.json` every compress stage writes under artifacts/compressed/<task>/; the parents'
numbers are the ones each compress stage measured in its own process (`parent/...`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from dlzoo.io import read_json, write_json
from dlzoo.errors import DataError
from dlzoo.plotting import plt, save_figure
from dlzoo.tracking import start_run

log = logging.getLogger(__name__)

COLUMNS = ["size_mb", "size_ratio", "size_mb_torch_save", "num_params", "nonzero_params", "macs", "macs_ratio",
           "latency_ms_b1", "latency_ms_b32", "speedup_b32",
           "test/ms_per_sentence_greedy", "decode_speedup_greedy", "compress_seconds"]


def collect(compressed_dir: str | Path, metric: str) -> pd.DataFrame:
    """One row per parent family (method `-`) and per compressed model."""
    summaries = [read_json(p) for p in sorted(Path(compressed_dir).glob("*/summary.json"))]
    if not summaries:
        raise DataError(f"no compressed models in {compressed_dir}/: run the `compress@...` stages first (`dvc repro`)")
    rows, parents = [], {}
    for s in summaries:
        m = s["metrics"]
        parents.setdefault(s["family"], {"family": s["family"], "method": "-", metric: m.get(f"parent/{metric}"),
                                         **{c: m.get(f"parent/{c}") for c in COLUMNS}})
        row = {"family": s["family"], "method": s["method"], metric: m.get(metric),
               f"{metric}_change": m.get(metric, float("nan")) - m.get(f"parent/{metric}", float("nan")),
               **{c: m.get(c) for c in COLUMNS}}
        row["compress_seconds"] = s.get("compress_seconds")
        if f"{metric}_std" in m:
            row[f"{metric}_std"] = m[f"{metric}_std"]
        rows.append(row)
    for p in parents.values():
        for ratio in ("size_ratio", "macs_ratio", "speedup_b32", "decode_speedup_greedy"):
            if any(r.get(ratio) is not None for r in rows):  # a parent is 1x of itself where ratios exist
                p[ratio] = 1.0
        p["compress_seconds"] = None
    df = pd.DataFrame([*parents.values(), *rows])
    df = df.dropna(axis="columns", how="all")  # e.g. MACs for translation, decoding speed for digits
    return df.sort_values(["family", "method"], key=lambda c: c.where(c != "-", "")).reset_index(drop=True)


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
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
    task, metric = cfg.task, cfg.report.metric
    df = collect(Path(cfg.report.compressed_root) / task, metric)
    out = Path(cfg.report.out_dir) / task / "compress"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "compression.csv", index=False)
    (out / "compression.md").write_text(markdown_table(df))
    files = [out / "compression.csv", out / "compression.md",
             plot_tradeoff(df, "size_mb", metric, out / "size_vs_metric.png", f"{task}: size on disk vs {metric}"),
             plot_tradeoff(df, cfg.report.latency, metric, out / "latency_vs_metric.png",
                           f"{task}: CPU latency ({cfg.report.latency}) vs {metric}")]
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
