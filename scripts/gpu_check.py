"""One short, prepared check of everything that only runs on a GPU, for when a GPU machine is lent.

    python scripts/gpu_check.py --dry          # any machine: compose, resolve and build every check (the tests run this)
    python scripts/gpu_check.py --out DIR      # a CUDA machine: run them, at most --budget seconds in all

Each check is the train stage as a user runs it (`pipelines/train.py`, after its `prepare` stage), one
short epoch (`trainer.limit_*_batches`), in its own scratch folder with its own MLflow store. Checks:
the `gpu` trainer in float32 and bf16-mixed, `ddp` and `fsdp` (on one GPU: the strategy's code path, not
its scaling), and the `full` profile's recipes. Results: one JSON line per check and DIR/gpu_check.json.

Dry mode composes and resolves each check's config, checks that the strategy and precision are ones this
Lightning accepts and that the model's and DataModule's classes take the config's arguments, so a renamed
key or class fails here on CPU instead of in a GPU session (without prepared data, as on a fresh clone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=20", "+trainer.limit_val_batches=5"]

# name -> overrides of pipelines/train.py (before SHORT)
CHECKS: dict[str, list[str]] = {
    "gpu-32-true": ["experiment=digits-cnn", "trainer=gpu", "trainer.precision=32-true", *SHORT],
    "gpu-bf16-mixed": ["experiment=digits-mobilenet", "trainer=gpu", "trainer.precision=bf16-mixed", *SHORT],
    "ddp-1gpu-nccl": ["experiment=digits-densenet", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=1",
                      "trainer.strategy.process_group_backend=nccl", "trainer.precision=auto", *SHORT],
    "fsdp-1gpu": ["experiment=digits-cnn", "trainer=fsdp", "trainer.devices=1", *SHORT],
    "full-translation-transformer": ["experiment=translation-en-ja-transformer", "profile=full", *SHORT],
    "full-translation-seq2seq-attn": ["experiment=translation-en-ja-seq2seq-attn", "profile=full", *SHORT],
    # The Zero network on the GPU (self-play leaf batches, training, arenas), search and rules on the CPU.
    "full-go-9x9-zero": ["experiment=go-5x5-alphago-zero", "profile=full", "runner.generations=1",
                         "runner.games_per_generation=4", "runner.simulations=8", "runner.train_steps=4",
                         "runner.arena_games=2", "runner.val_games=2"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def dry_check(name: str, overrides: list[str]) -> dict:
    """Everything short of running, and without prepared data: the config resolves, the strategy and precision
    exist, and the model's and DataModule's classes import and accept the config's arguments by name."""
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from dlzoo.hardware import resolve_precision

    cfg = compose(overrides)
    OmegaConf.resolve(cfg)
    trainer = cfg.trainer
    strategy = trainer.strategy
    if not isinstance(strategy, str):
        get_class(strategy._target_)
    precision = resolve_precision(trainer.precision, "gpu")
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    assert precision in _PRECISION_INPUT_STR.__args__, f"{name}: precision {precision!r} unknown to Lightning"
    checked = []
    for key in ("model", "data.module"):
        node = OmegaConf.select(cfg, key)
        if node is None or "_target_" not in node:
            continue
        cls = get_class(node._target_)
        kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
        # a renamed or misspelt argument fails here (the classes need prepared data to be built for real)
        inspect.signature(cls).bind_partial(**kwargs)
        checked.append(cls.__name__)
    return {"check": name, "dry": True, "accelerator": trainer.accelerator, "precision": precision,
            "devices": trainer.devices, "built": checked}


def run_check(name: str, overrides: list[str], out: Path, timeout: float) -> dict:
    """Prepare the recipe's data and train it once, as the DVC stages would, in out/<name>."""
    cfg = compose(overrides)
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    if not (REPO / "data").exists():
        return {"check": name, "ok": False, "error": "data/ missing: dvc pull first"}
    (work / "data").exists() or (work / "data").symlink_to(REPO / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    started = time.perf_counter()
    steps = []
    data = cfg.hydra.runtime.choices.get("data")
    if data and "prepare" in cfg.data:
        profile = next((o for o in overrides if o.startswith("profile=")), "profile=cpu")
        steps.append([sys.executable, str(REPO / "pipelines" / "prepare.py"), f"data={data}", profile])
    steps.append([sys.executable, str(REPO / "pipelines" / "train.py"), *overrides])
    for cmd in steps:
        left = timeout - (time.perf_counter() - started)
        try:
            proc = subprocess.run([*cmd, "hydra.run.dir=outputs/gpu_check"], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            return {"check": name, "ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}
        (work / "log.txt").open("a").write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[:400]
            return {"check": name, "ok": False, "error": tail, "seconds": round(time.perf_counter() - started, 1)}
    summary = json.loads((work / cfg.paths.model_dir / "train_summary.json").read_text())
    keep = ("precision", "strategy", "world_size", "epochs", "best_score", "train_seconds", "num_params")
    return {"check": name, "ok": True, "seconds": round(time.perf_counter() - started, 1),
            **{k: summary[k] for k in keep if k in summary}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="compose and build every check; run nothing")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check")))
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all checks together")
    parser.add_argument("--only", nargs="*", default=None, help="check names (default: all)")
    args = parser.parse_args()
    checks = {k: v for k, v in CHECKS.items() if args.only is None or k in args.only}
    results = []
    if args.dry:
        for name, overrides in checks.items():
            results.append(dry_check(name, overrides))
            print(json.dumps(results[-1]), flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible; use --dry on a machine without one")
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget
    for name, overrides in checks.items():
        left = deadline - time.perf_counter()
        result = run_check(name, overrides, args.out.resolve(), left) if left > 10 else {
            "check": name, "ok": False, "error": "not run: budget spent"}
        result["gpu"] = torch.cuda.get_device_name(0)
        results.append(result)
        print(json.dumps(result), flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
