"""The generic compress entry: a trained parent checkpoint + one method -> a compressed model, measured
with the parent family's own evaluator, recorded as its own MLflow run and DVC metrics file.

    python pipelines/compress.py experiment=digits-cnn compress=static-int8

Any family plugs in whose LightningModule keeps its network in `.net` (dlzoo.models.base.FamilyModule):
its evaluator (`cfg.evaluator`, `evaluate(module, datamodule, out_dir) -> (metrics, files)`) gets the
family's own LightningModule with the compressed network swapped into `.net`, exactly as the evaluate
stage hands it the parent, so the network only has to accept the parent's inputs. A family without data
(an RL agent) is handed as the evaluate stage hands it: the network itself and `datamodule=None` (its
evaluator brings its own held-out episodes), with example inputs from the recipe's `compression.examples`. The parent
is measured again in the same process, so the ratios (`size_ratio`, `speedup_b32`, ...) compare numbers
taken under the same machine load; speed-ups come with an interval (`speedup_b32_lo` / `_hi`) and
`speedup_b32_significant` says whether it excludes 1.0.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from dlzoo.compression import export_onnx
from dlzoo.compression.context import CompressContext, Compressed, first_input
from dlzoo.compression.measure import size_metrics
from dlzoo.compression.serialize import save_model
from dlzoo.config import build, require_keys
from dlzoo.io import read_json, write_json
from dlzoo.errors import ConfigError, ExportError
from dlzoo.checkpoints import load_trained_module
from dlzoo.evaluation.profiling import count_macs, cpu_latency
from dlzoo.tracking import flat_params, start_run

log = logging.getLogger(__name__)


def for_profile(cfg: DictConfig) -> DictConfig:
    """Under `profile=smoke`, merge the method's `compress.smoke` overrides (fewer epochs, seeds, batches)."""
    smoke = cfg.compress.get("smoke")
    if cfg.profile_name != "smoke" or not smoke:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compress = OmegaConf.merge(cfg.compress, smoke)
    return cfg


def load_parent(cfg: DictConfig):
    """The parent family's LightningModule with its trained weights (checkpoint checked for task/family)."""
    return load_trained_module(cfg)


def compress(cfg: DictConfig) -> dict:
    require_keys(cfg, "task", "family", "evaluator", "model", "compress.method", "compress.apply")
    cfg = for_profile(cfg)
    previous = torch.get_num_threads()
    # A fixed intra-op thread count: small models gain nothing from more, and on a shared CPU extra
    # OpenMP threads that spin-wait for busy cores make fine-tuning several times slower.
    # A method may ask for more (`compress.torch_threads`: minutes of translation distillation).
    torch.set_num_threads(int(cfg.compress.get("torch_threads") or cfg.torch_threads))
    try:
        return _compress(cfg)
    finally:
        torch.set_num_threads(previous)


def _compress(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    method = build(cfg.compress.apply, "compress.apply")  # bad method parameters fail before any work
    evaluator = build(evaluator_config(cfg), "evaluator")
    module, ckpt_path = load_parent(cfg)
    datamodule = None  # a family that owns its loop (an agent) has no dataset
    if OmegaConf.select(cfg, "data.module") is not None:
        datamodule = build(cfg.data.module, "data.module")
        datamodule.setup("fit")
        datamodule.setup("test")
    inputs = build(cfg.compress.inputs, "compress.inputs") if cfg.compress.get("inputs") else first_input
    examples = OmegaConf.select(cfg, "compression.examples")
    examples = build(examples, "compression.examples") if examples is not None else None
    net = getattr(module, "net", module)  # an agent's checkpoint loads its network itself
    ctx = CompressContext(cfg, copy.deepcopy(net).eval(), datamodule, inputs, module, examples)

    result: Compressed = method(ctx)
    out_dir = Path(cfg.paths.compressed_dir)
    with tempfile.TemporaryDirectory() as scratch:  # the parent's plots are the evaluate stage's, not ours
        parent_metrics, _ = evaluator(ctx.with_net(ctx.parent()), datamodule, scratch)
    parent_metrics.update(size_metrics(ctx.net))

    metrics, files = _measure(result, evaluator, ctx, out_dir)
    metrics.update(result.info)
    metrics.update({f"parent/{k}": float(v) for k, v in parent_metrics.items()})
    metrics.update(_ratios(metrics, parent_metrics))
    metrics.update(retention(metrics, parent_metrics, cfg.compress.get("acceptance")))
    # Timed where the evaluator times the model too, or where the family's examples are its inputs (an agent
    # acts on one observation per step: its evaluator keeps no latency of its own).
    if ("latency_ms_b1" in metrics or examples is not None) and cfg.compress.get("paired_latency", True):
        metrics.update(_paired_speedups(ctx.parent(), result.nets[0], ctx, threads=cfg.evaluator.get("latency_threads", 1),
                                        rounds=int(OmegaConf.select(cfg, "speedup.rounds", default=6)),
                                        min_run_time=float(OmegaConf.select(cfg, "speedup.min_run_time_s", default=0.05))))

    onnx_status = "skipped"
    if cfg.compress.onnx.export:
        onnx_status, onnx_metrics = _export_onnx(result.nets[0], ctx, out_dir / "model.onnx", cfg.compress.onnx)
        metrics.update(onnx_metrics)
        if onnx_metrics:
            files.append(out_dir / "model.onnx")
    files.append(save_model(result.nets[0], out_dir / "model.safetensors"))
    seconds = time.perf_counter() - started

    summary_path = Path(cfg.paths.model_dir) / "train_summary.json"
    parent_run_id = read_json(summary_path)["run_id"] if summary_path.exists() else ""
    name = f"{cfg.family}-{cfg.compress.method}"
    with start_run(cfg, "compress", run_name=name, method=cfg.compress.method, parent_run_id=parent_run_id,
                   checkpoint=ckpt_path, onnx_export=onnx_status[:5000]) as run:
        import mlflow

        params = flat_params(cfg)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        mlflow.log_metrics({**metrics, "compress_seconds": seconds})
        for f in files:
            mlflow.log_artifact(str(f), "compressed" if f.parent == out_dir else "evaluation")
        run_id = run.info.run_id
    write_json(out_dir / "summary.json", {
        "task": cfg.task, "family": cfg.family, "method": cfg.compress.method, "run_name": name, "run_id": run_id,
        "parent_run_id": parent_run_id, "onnx_export": onnx_status, "compress_seconds": seconds, "metrics": metrics,
    })
    # The DVC metrics file is written last, so a failed run never leaves numbers behind.
    write_json(cfg.paths.compress_metrics_file, metrics)
    log.info("compressed %s with %s in %.1f s: %s", cfg.experiment_name, cfg.compress.method, seconds,
             {k: round(v, 5) for k, v in metrics.items() if not k.startswith(("parent/", "seed"))})
    return metrics


def evaluator_config(cfg: DictConfig) -> DictConfig:
    """The family's evaluator with the method's `compress.evaluator` settings merged in, for the parent and
    the compressed model alike (e.g. a student trained apart from its teacher must not be credited with the
    teacher's training curve). A setting the evaluator does not have is a one-line error."""
    overrides = cfg.compress.get("evaluator")
    if not overrides:
        return cfg.evaluator
    unknown = sorted(set(overrides) - set(cfg.evaluator))
    if unknown:
        raise ConfigError(f"compress.evaluator.{unknown[0]} is not a setting of the evaluator {cfg.evaluator._target_} "
                          f"(it has: {', '.join(k for k in cfg.evaluator if not k.startswith('_'))})")
    return OmegaConf.merge(cfg.evaluator, overrides)


def retention(metrics: dict, parent: dict, acceptance: DictConfig | None) -> dict[str, float]:
    """How much of the parent's result the compressed model keeps: (m - b) / (parent m - parent b) on
    `acceptance.metric`, b the `acceptance.baseline` metric measured on the same held-out examples (a
    uniform-random policy's return: the raw ratio means nothing for negative returns such as Acrobot's),
    or 0 without one; `retention_passed` says whether it reaches the method's `min_retention`. Recorded,
    with a warning when short, never hidden (as an ONNX model outside its tolerance)."""
    if not acceptance:
        return {}
    key, base = acceptance.metric, acceptance.get("baseline")
    missing = [k for k in (key, base) if k and (k not in metrics or k not in parent)]
    if missing:
        raise ConfigError(f"compress.acceptance names {missing[0]}, which the evaluator does not report")
    b, pb = (metrics[base], parent[base]) if base else (0.0, 0.0)
    if parent[key] == pb:
        raise ConfigError(f"compress.acceptance: the parent's {key} equals its baseline {base}: nothing to retain")
    out = {"retention": (metrics[key] - b) / (parent[key] - pb)}
    if acceptance.get("min_retention") is not None:
        out["retention_min"] = float(acceptance.min_retention)
        out["retention_passed"] = float(out["retention"] >= acceptance.min_retention)
        if not out["retention_passed"]:
            log.warning("the compressed model keeps %.1f%% of its parent's %s, short of the %.0f%% bar",
                        100 * out["retention"], key, 100 * acceptance.min_retention)
    return out


def _measure(result: Compressed, evaluator, ctx: CompressContext, out_dir: Path) -> tuple[dict, list[Path]]:
    """Evaluate every network of the result (one per seed); numbers are averaged over seeds, and each
    seed's test metrics are kept as `seed<k>/<metric>`."""
    runs, files = [], []
    seeds = result.seeds or [None] * len(result.nets)
    for net, seed in zip(result.nets, seeds):
        # the family's own module around the compressed network, as the evaluate stage hands it the parent's
        metrics, evaluation_files = evaluator(ctx.with_net(net), ctx.datamodule, out_dir / "evaluation" / (f"seed{seed}" if seed is not None else ""))
        metrics.update(size_metrics(net))
        if metrics.get("macs") == 0 and result.float_reference is not None:
            # int8 kernels are invisible to the FLOP counter; they do the float model's MACs, in int8
            metrics["macs"] = count_macs(result.float_reference, ctx.example(1)[0])
        runs.append({k: float(v) for k, v in metrics.items()})
        files += evaluation_files
    merged = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    if len(runs) > 1:
        for seed, r in zip(seeds, runs):
            merged.update({f"seed{seed}/{k}": v for k, v in r.items() if k.startswith("test/")})
        merged.update({f"{k}_std": statistics.stdev(r[k] for r in runs) for k in runs[0] if k.startswith("test/")})
    return merged, files


def _ratios(metrics: dict, parent: dict) -> dict[str, float]:
    """parent / compressed for costs (>1 = smaller or faster). The batch-1/32 speed-ups are not among
    them: they come from `_paired_speedups`, with an interval. Decoding speed-ups (translation) are the
    evaluator's single measurements, without one."""
    out = {}
    for key, name in (("size_mb", "size_ratio"), ("num_params", "param_ratio"), ("nonzero_params", "nonzero_ratio"),
                      ("macs", "macs_ratio"),
                      ("test/ms_per_sentence_greedy", "decode_speedup_greedy"), ("test/ms_per_sentence_beam", "decode_speedup_beam")):
        if metrics.get(key) and parent.get(key):
            out[name] = float(parent[key]) / float(metrics[key])
    return out


def speedup_interval(ratios: list[float], name: str) -> dict[str, float]:
    """A speed-up from `rounds` paired ratios (parent / compressed latency, one per round): the median
    ratio, and [min, max] over the rounds as its interval. For independent rounds each ratio falls on
    either side of the true median with probability 1/2, so [min, max] misses it with probability
    2 * 0.5^rounds (sign-test order statistics, no assumption on the distribution): 6 rounds give a 96.9%
    interval. A speed-up whose interval contains 1.0 is no measured difference (`<name>_significant` 0)."""
    lo, hi = min(ratios), max(ratios)
    return {name: statistics.median(ratios), f"{name}_lo": lo, f"{name}_hi": hi,
            f"{name}_significant": float(lo > 1.0 or hi < 1.0), f"{name}_confidence": 1.0 - 2 * 0.5 ** len(ratios)}


def _paired_speedups(parent, net, ctx: CompressContext, threads: int, rounds: int = 6, min_run_time: float = 0.05) -> dict[str, float]:
    """Parent / compressed latency measured alternately in `rounds` (A B, B A, A B, ...: neither side is
    always first), one ratio of medians per round: a slow drift in machine load (other jobs on a shared
    CPU) then hits both sides of a ratio alike, and the rounds' spread is what the interval reports."""
    out = {}
    for batch in (1, 32):
        example = ctx.example(batch)
        if len(example) != 1 or example[0].shape[0] != batch:
            continue
        ratios = []
        for k in range(rounds):
            timed = {}
            for side, model in (("parent", parent), ("net", net))[:: 1 if k % 2 == 0 else -1]:
                timed[side] = cpu_latency(model, example[0], threads=threads, min_run_time=min_run_time).median
            ratios.append(timed["parent"] / timed["net"])
        out.update(speedup_interval(ratios, f"speedup_b{batch}"))
    return out


def _export_onnx(net, ctx: CompressContext, path: Path, onnx_cfg: DictConfig) -> tuple[str, dict]:
    """Export and check with onnxruntime on the test split. Where the format does not allow it (e.g. an
    int8 operator without an ONNX translation) the reason is recorded; with `onnx.required` it is an error.
    A model outside its tolerance is kept and recorded as such (`onnx/within_tolerance` 0, a warning, the
    status `outside tolerance: ...` in the run's `onnx_export` tag and the compress report)."""
    try:
        export_onnx.export(net, ctx.example(1), path)
        checked = export_onnx.check(path, net, ctx.test_inputs(),
                                    onnx_cfg.get("atol"), onnx_cfg.get("steps_per_requantisation"))
    except ExportError as exc:
        path.unlink(missing_ok=True)
        if onnx_cfg.required:
            raise
        log.warning("no ONNX model: %s", exc)
        return f"failed: {exc}", {}
    if not checked["onnx/within_tolerance"]:
        if "onnx/tolerance_steps" in checked:
            bound = (f"{checked['onnx/max_diff_steps']:.2f} int8 output steps > the tolerance of {checked['onnx/tolerance_steps']:g} "
                     f"({checked['onnx/tolerance_steps'] / checked['onnx/requantisations']:g} step per requantisation, "
                     f"{checked['onnx/requantisations']:g} on the longest path)")
        else:
            bound = f"{checked['onnx/max_abs_diff']:.3g} > atol {checked['onnx/atol']:.3g}"
        message = (f"ONNX outputs differ from PyTorch by up to {bound} on the test split "
                   f"(same class for {checked['onnx/argmax_agreement']:.2%})")
        if onnx_cfg.required:
            raise ExportError(message)
        log.warning("%s", message)
        return f"outside tolerance: {message}", checked
    return "ok", checked
