"""The runner contract: a family that owns its loop (no DataModule, no Lightning Trainer: an agent, a
self-play system) names its `runner` in the recipe and still gets, from the pipeline, the MLflow run with
the standard tags, a stamped checkpoint, learning curves, a summary, and the evaluate stage."""

from __future__ import annotations

import json

import torch

from conftest import mlflow_runs
from dlzoo.checkpoints import load_trained_module
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.training.train import train

TRUE_W = torch.tensor([[1.5, -2.0, 0.5]])


def _batch(generator: torch.Generator, n: int = 64):
    x = torch.randn(n, 3, generator=generator)
    return x, x @ TRUE_W.T


def loop_runner(cfg, ctx) -> dict:
    """A hand-written loop: SGD on a linear model, validation each epoch, best weights kept through ctx."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    val_x, val_y = _batch(torch.Generator().manual_seed(1234), 256)
    for epoch in range(cfg.trainer.max_epochs):
        x, y = _batch(generator)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(val_x), val_y).item()
        ctx.log_metrics({"train/loss": loss.item(), "val/loss": val}, step=epoch)
        ctx.end_epoch({"epoch": epoch, "train/loss": loss.item(), "val/loss": val})
        ctx.save_checkpoint(model.state_dict(), val)
    return {"checkpoint": str(ctx.checkpoint_path), "best_score": ctx.best_score, "epochs": cfg.trainer.max_epochs}


def mse_evaluator(model, datamodule, reports_dir):
    assert datamodule is None  # no dataset: the evaluator brings its own held-out draws
    x, y = _batch(torch.Generator().manual_seed(99), 512)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(x), y).item()
    return {"test/mse": mse}, []


def test_a_loop_runner_gets_the_pipeline_services(workdir, make_cfg, capsys):
    overrides = [
        "task=toy-regression", "family=loop", "trainer.max_epochs=15", "checkpoint.monitor=val/loss", "checkpoint.mode=min",
        "runner._target_=test_runner_contract.loop_runner", "results.metric=test/mse", "results.mode=min",
        "+model._target_=torch.nn.Linear", "+model.in_features=3", "+model.out_features=1",
        "+evaluator._target_=test_runner_contract.mse_evaluator", "+evaluator._partial_=true",
        "tracking.log_model=false",
    ]
    cfg = make_cfg(*overrides)
    summary = train(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "epoch" in ln and "ETA" in ln]
    assert len(lines) == 15 and "s/epoch" in lines[0]  # one progress line per epoch

    assert summary["best_score"] < 0.05  # the loop learned the linear map (val MSE from ~4 at the start)
    assert (workdir / "plots/toy-regression/loop/learning_curve.csv").is_file()
    assert (workdir / "plots/toy-regression/loop/learning_curve.png").is_file()
    model, _ = load_trained_module(cfg)  # the stamped checkpoint loads like any family's
    assert torch.allclose(model.weight, TRUE_W, atol=0.2)

    metrics = evaluate(make_cfg(*overrides))
    assert metrics["test/mse"] < 0.05
    assert json.loads((workdir / "metrics/toy-regression/loop.json").read_text())["test/mse"] == metrics["test/mse"]
    runs = {r["tags"]["stage"]: r for r in mlflow_runs(workdir / "mlflow.db")}
    assert set(runs) == {"train", "evaluate"}
    assert runs["train"]["status"] == "FINISHED" and runs["train"]["tags"]["family"] == "loop"
    assert runs["train"]["metrics"]["val/loss"] == summary["best_score"] or runs["train"]["metrics"]["val/loss"] >= summary["best_score"]
    assert runs["train"]["params"]["hardware/precision"] == "32-true"
    assert runs["evaluate"]["metrics"]["test/mse"] == metrics["test/mse"]
