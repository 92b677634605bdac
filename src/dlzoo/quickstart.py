"""`make try`: from a fresh clone to a served prediction in a few minutes.

The pipeline's own functions, on one recipe at the default profile: prepare scikit-learn's digits, train the
plain CNN (`experiment=digits-cnn`), score it on the held-out test split, register it and make it the task's
champion (`models:/digits@champion`, answering a probability per class), serve it with `mlflow models serve` on a
free loopback port, send one test image and print the answer.

Everything goes to `outputs/try/` (its own `mlflow.db`, artifacts and metrics), so no tracked file and nothing in
the project's store changes; each run starts that folder afresh.

    make try                        # or: python -m dlzoo.quickstart [--experiment digits-cnn] [--profile cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("dlzoo")

REPO = Path(__file__).resolve().parents[2]
OUT = Path("outputs/try")
CLASSES = [str(d) for d in range(10)]


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(uri: str, tracking_uri: str, timeout: float = 120):
    """`mlflow models serve` (as `make serve` starts it) on a free loopback port; yields its invocations URL."""
    from dlzoo.serve import server_command, server_env, wait_until_answering

    port = _free_port()
    server = subprocess.Popen(server_command(uri, "127.0.0.1", port), env=server_env(tracking_uri),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, timeout, "mlflow models serve")
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        server.terminate()
        server.wait(timeout=30)


def post(url: str, inputs) -> list:
    request = urllib.request.Request(url, method="POST", data=json.dumps({"inputs": inputs}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["predictions"]


def run(experiment: str = "digits-cnn", profile: str = "cpu") -> dict:
    """Train, evaluate, register, serve and ask once, in OUT (the working directory must be the repository)."""
    from hydra.utils import instantiate

    from dlzoo.config import build
    from dlzoo.evaluation.evaluate import evaluate
    from dlzoo.tracking.champions import choose, publish
    from dlzoo.training.train import train

    started = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    os.chdir(OUT)   # relative paths (artifacts/, metrics/, mlflow.db) resolve here, as in a stage's repository
    os.environ.pop("MLFLOW_TRACKING_URI", None)   # its own store, whatever the shell points at
    os.environ.pop("DVC_ROOT", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"   # one line per step, not a bar per download
    cfg = _compose(f"experiment={experiment}", f"profile={profile}", "tracking.uri=sqlite:///mlflow.db")
    if cfg.task != "digits":
        raise SystemExit(f"error: make try serves a digits classifier; {experiment} is a {cfg.task} recipe")
    instantiate(cfg.data.prepare, out_dir=cfg.data.dir)
    trained = train(cfg)
    metrics = evaluate(cfg)
    tasks = {cfg.task: {"metric": "test/accuracy", "mode": "max", "families": [cfg.family], "columns": []}}
    done = publish(choose(tasks, Path("metrics")), tasks, "sqlite:///" + str(Path("mlflow.db").resolve()),
                   {cfg.task: ("probabilities", {"classes": CLASSES})})
    if cfg.task not in done["published"]:
        raise SystemExit(f"error: {cfg.task}-{cfg.family} was not registered in {OUT / 'mlflow.db'}")
    from dlzoo.tracking import client
    from dlzoo.tracking.variants import EXPERIMENT_KIND, MODEL_TRAINING

    store = client("sqlite:///" + str(Path("mlflow.db").resolve()))   # the UI opens it on the runs table
    store.set_experiment_tag(store.get_experiment_by_name(cfg.task).experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    trained_at = time.perf_counter()

    datamodule = build(cfg.data.module, "data.module")
    datamodule.setup("test")
    images, labels = next(iter(datamodule.test_dataloader()))
    uri = f"models:/{cfg.task}@champion"
    with serving(uri, "sqlite:///" + str(Path("mlflow.db").resolve())) as url:
        (answer,) = post(url, images[:1].numpy().tolist())
    best = max(answer, key=answer.get)
    return {"experiment": experiment, "profile": profile, "test/accuracy": metrics["test/accuracy"],
            "epochs": trained.get("epochs"), "model": uri, "url": url, "label": int(labels[0]), "answer": answer,
            "predicted": best, "train_seconds": round(trained_at - started, 1),
            "total_seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    from dlzoo.cli import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m dlzoo.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="digits-cnn", help="a digits recipe of conf/experiment/")
    parser.add_argument("--profile", default="cpu", help="smoke | cpu | full (conf/profile/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    result = run(args.experiment, args.profile)
    probabilities = ", ".join(f"{k}: {v:.3f}" for k, v in result["answer"].items())
    print(f"\n{result['experiment']} ({result['profile']} profile): test accuracy {result['test/accuracy']:.4f}, "
          f"registered and served as {result['model']} ({result['train_seconds']:.0f} s to train and evaluate)")
    print(f"POST {result['url']} with one test image (label {result['label']}) answered:\n  {{{probabilities}}}")
    print(f"predicted {result['predicted']} in {result['total_seconds']:.0f} s; the store, model and metrics are in "
          f"{OUT}/ (make ui STORE={OUT}/mlflow.db)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
