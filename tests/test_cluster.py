"""The cluster path, run for real: a one-node SLURM (scripts/slurm_local.sh) takes a smoke training through
`hydra/launcher=slurm`, and eight trainings at once (`hydra/launcher=local`) all land in one tracking store.

The SLURM tests need slurm-wlm, slurmdbd, munge and MariaDB (`scripts/slurm_local.sh install`, as root;
.ci/run does it). Without them they skip, unless DLZOO_REQUIRE_SLURM=1 (set by .ci/run once the install
succeeded), where a missing SLURM is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from conftest import CONF, REPO, compose_config, mlflow_runs, prepare_data

SLURM_SCRIPT = REPO / "scripts" / "slurm_local.sh"
TRAIN = REPO / "pipelines" / "train.py"
SMOKE = ["experiment=binary-addition-rnn", "profile=smoke", "tracking.log_model=false"]
SMOKE_EPOCHS = 2  # conf/scale/smoke: binary-addition-rnn trains 2 epochs


def _multirun(cwd, *overrides, env=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE")}, **(env or {})}
    return subprocess.run([sys.executable, str(TRAIN), "-m", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A working directory with the smoke recipe's prepared data."""
    root = tmp_path_factory.mktemp("cluster")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        prepare_data(compose_config(*SMOKE))
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster started by the project's script; every daemon it started is stopped after."""
    sbin = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # where Debian puts the daemons
    if not all(shutil.which(exe, path=sbin) for exe in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")):
        if os.environ.get("DLZOO_REQUIRE_SLURM") == "1":
            pytest.fail("DLZOO_REQUIRE_SLURM=1 but SLURM is not installed (scripts/slurm_local.sh install)")
        pytest.skip("SLURM not installed: scripts/slurm_local.sh install (root) enables these tests")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run([str(SLURM_SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield {"SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([str(SLURM_SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=120)
        for name in ("slurmd.pid", "slurmctld.pid", "slurmdbd.pid", "mariadbd.pid", "munged.pid"):
            assert not (state / name).exists(), f"{name} left behind: daemon not stopped"


def _sacct(env: dict, name: str) -> list[dict]:
    """Jobs called `name` from SLURM's accounting, once slurmdbd has their final state (it lags seconds)."""
    for _ in range(60):
        out = subprocess.run(["sacct", "--allocations", "--parsable2", "--noheader", "-o", "JobID,JobName,State,ExitCode"],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=60)
        jobs = [dict(zip(("id", "name", "state", "exit"), line.split("|"))) for line in out.stdout.splitlines() if line]
        jobs = [job for job in jobs if job["name"] == name]
        if jobs and jobs[-1]["state"] not in ("PENDING", "RUNNING", "COMPLETING"):
            return jobs
        time.sleep(0.5)
    return jobs


def test_a_smoke_training_runs_as_a_slurm_job(prepared, slurm):
    """Submitted through hydra/launcher=slurm: SLURM runs it (sacct), the MLflow run carries the job id,
    the checkpoint and the run's metrics exist."""
    model_dir = prepared / "artifacts" / "slurm"
    proc = _multirun(prepared, *SMOKE, "hydra/launcher=slurm", f"paths.model_dir={model_dir}",
                     # the test node has 2 CPUs and no memory accounting: ask for what it has
                     "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", env=slurm)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((model_dir / "train_summary.json").read_text())
    assert (model_dir / "best.ckpt").exists()

    jobs = _sacct(slurm, "train")
    assert jobs and jobs[-1]["state"] == "COMPLETED" and jobs[-1]["exit"] == "0:0", jobs

    runs = [run for run in mlflow_runs(prepared / "mlflow.db") if run["tags"].get("slurm.job_id")]
    assert len(runs) == 1
    run = runs[0]
    assert run["tags"]["slurm.job_id"] == jobs[-1]["id"]
    assert run["tags"]["slurm.cluster"] == "dlzoo" and run["status"] == "FINISHED"
    assert run["tags"]["family"] == "rnn" and run["tags"]["stage"] == "train"
    assert {"val/loss", "val/accuracy", "train/loss_epoch"} <= set(run["metrics"])
    assert summary["best_score"] == pytest.approx(run["metrics"]["val/loss"] if summary["monitor"] == "val/loss"
                                                  else run["metrics"][summary["monitor"]], abs=0.05)


def test_make_repro_on_a_login_node_runs_the_train_stage_as_a_slurm_job(slurm, tmp_path):
    """`make repro LAUNCHER=slurm` as the README types it: DVC runs the train stage's command here, the command
    submits the training to SLURM and waits, and DVC records the stage from the job's outputs."""
    import yaml

    from test_make_repro import activated_env, fresh_copy, sh, user_env

    dst = fresh_copy(tmp_path)
    # The site's settings, as a user sets them for a cluster (not stage deps): this node has 2 CPUs, no memory accounting.
    launcher = dst / "conf" / "hydra" / "launcher" / "slurm.yaml"
    launcher.write_text(launcher.read_text().replace("cpus_per_task: 4", "cpus_per_task: 1").replace("mem_gb: 32", "mem_gb: null"))
    stage = "train_binary-addition-rnn"
    audit = tmp_path / "imports.jsonl"
    earlier = subprocess.run(["sacct", "--allocations", "--noheader", "-X", "-o", "JobID"], env={**os.environ, **slurm},
                             capture_output=True, text=True, check=True, timeout=60).stdout.split()
    out = sh("make", "repro", "PROFILE=smoke", "LAUNCHER=slurm", f"TARGETS={stage}", cwd=dst, timeout=900,
             env=user_env({**slurm, "DLZOO_IMPORT_AUDIT": str(audit)}))
    log = out.stdout + out.stderr
    assert f"Running stage '{stage}'" in log and "Submitit 'slurm' sweep output dir" in log, log[-3000:]

    jobs = [job for job in _sacct(slurm, "train") if job["id"] not in earlier]
    assert len(jobs) == 1 and jobs[0]["state"] == "COMPLETED" and jobs[0]["exit"] == "0:0", jobs
    (run,) = [r for r in mlflow_runs(dst / "mlflow.db") if r["tags"].get("stage") == "train"]
    assert run["tags"]["slurm.job_id"] == jobs[0]["id"] and run["status"] == "FINISHED"
    assert run["tags"]["profile"] == "smoke" and len(run["metrics"]) > 0
    # DVC waited for the job: the lock holds the command it ran and the outputs the job wrote
    locked = yaml.safe_load((dst / "dvc.lock").read_text())["stages"][stage]
    assert locked["cmd"].endswith("+launcher=slurm") and locked["params"]["params.yaml"]["launcher"] == "slurm"
    assert (dst / "artifacts/models/binary-addition-rnn/best.ckpt").is_file()
    assert json.loads(sh("dvc", "status", "--json", stage, cwd=dst, env=activated_env()).stdout or "{}") == {}
    # the job (not this process) trained, under the stage's name, importing only the stage's deps
    (record,) = [r for r in map(json.loads, audit.read_text().splitlines()) if r["stage"] == stage]
    deps = set(yaml.safe_load((dst / "dvc.yaml").read_text())["stages"][stage]["deps"])
    files = {str(Path(f).resolve().relative_to(dst.resolve())) for f in record["files"]}
    assert "src/dlzoo/cluster.py" in files and files <= deps, sorted(files - deps)


def test_a_preempted_slurm_job_is_requeued_and_resumes_where_it_stopped(prepared, slurm, tmp_path):
    """Pre-emption as SLURM announces it (the `--signal` of the launcher config, SIGUSR2, sent here with
    `scancel --signal` once the first epoch is done): submitit requeues the job, the requeued job resumes from
    the runner's resume point in the same MLflow run, and ends with an uninterrupted run's weights and history."""
    from mlflow import MlflowClient

    epochs = 12
    common = [*SMOKE, f"trainer.max_epochs={epochs}"]
    slurm_dir, straight_dir = tmp_path / "slurm", tmp_path / "straight"
    store = f"sqlite:///{tmp_path / 'slurm.db'}"
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE")}, **slurm}
    job = subprocess.Popen([sys.executable, str(TRAIN), "-m", *common, "hydra/launcher=slurm", f"tracking.uri={store}",
                            f"paths.model_dir={slurm_dir}/model", f"paths.plots_dir={slurm_dir}/plots",
                            f"hydra.sweep.dir={slurm_dir}/multirun", "hydra.launcher.cpus_per_task=1",
                            "hydra.launcher.mem_gb=null"], cwd=prepared, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    point = slurm_dir / "model.resume" / "resume.json"
    deadline = time.monotonic() + 300
    while not point.exists():  # the first epoch's resume point is committed
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no resume point within 300 s"
        time.sleep(0.2)
    job_id = subprocess.run(["squeue", "--noheader", "-o", "%i", "-n", "train"], env=env, capture_output=True,
                            text=True, check=True).stdout.split()[0]
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True, timeout=60)
    # SLURM holds a requeued job for about two minutes (its BeginTime); release it as an administrator would
    for _ in range(240):
        state = subprocess.run(["squeue", "--noheader", "-o", "%T", "-j", job_id], env=env, capture_output=True,
                               text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True, timeout=60)
            break
        time.sleep(0.5)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    straight = subprocess.run([sys.executable, str(TRAIN), *common, f"tracking.uri=sqlite:///{tmp_path / 'straight.db'}",
                               f"paths.model_dir={straight_dir}/model", f"paths.plots_dir={straight_dir}/plots",
                               "hydra.run.dir=outputs/straight"], cwd=prepared, env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    a = torch_load(slurm_dir / "model/best.ckpt")
    b = torch_load(straight_dir / "model/best.ckpt")
    assert all(a[k].equal(b[k]) for k in b) and a.keys() == b.keys()
    client, twin = MlflowClient(store), MlflowClient(f"sqlite:///{tmp_path / 'straight.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("binary-addition").experiment_id])
    (other,) = twin.search_runs([twin.get_experiment_by_name("binary-addition").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["slurm.job_id"] == job_id
    assert run.data.tags["dlzoo.resumes"] == "1" and run.data.tags["slurm.restart_count"] == "1"
    for key in other.data.metrics:  # the same points: none missing, none repeated
        history = [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
        assert history == [(m.step, m.value) for m in sorted(twin.get_metric_history(other.info.run_id, key),
                                                                key=lambda m: m.step)], key
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == epochs


def torch_load(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_eight_concurrent_trainings_are_all_recorded(prepared, tmp_path):
    """Eight smoke trainings at once (submitit's local executor) into one fresh SQLite store: all eight
    runs FINISHED, each with its full learning curve, its own seed and checkpoint."""
    store = tmp_path / "mlflow.db"
    sweep = tmp_path / "sweep"
    proc = _multirun(prepared, *SMOKE, "hydra/launcher=local", "seed=range(1,9)", f"tracking.uri=sqlite:///{store}",
                     f"paths.model_dir={sweep}/models/seed${{seed}}", f"paths.plots_dir={sweep}/plots/seed${{seed}}",
                     f"hydra.sweep.dir={sweep}/multirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(store)
    assert len(runs) == 8
    assert sorted(int(run["params"]["seed"]) for run in runs) == list(range(1, 9))
    assert all(run["status"] == "FINISHED" for run in runs)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    for run in client.search_runs([client.get_experiment_by_name("binary-addition").experiment_id]):
        for key in ("val/loss", "val/accuracy", "train/loss_epoch"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == SMOKE_EPOCHS == len(set(steps)), (key, steps)
    for seed in range(1, 9):
        assert (sweep / "models" / f"seed{seed}" / "best.ckpt").exists()


def test_the_launcher_creates_the_store_and_every_swept_experiment_first(tmp_path, monkeypatch):
    """Concurrent jobs on a fresh store race to create its tables and their experiment; the callback does
    both in the launching process, for each experiment the sweep names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlzoo.cluster import TrackingStoreReady

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*SMOKE, "hydra/launcher=local"], return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.overrides.task = ["experiment=binary-addition-rnn,timeseries-sine-lstm", "seed=1,2"]
                cfg.hydra.job.config_name = "config"
            TrackingStoreReady().on_multirun_start(cfg)
    finally:
        GlobalHydra.instance().clear()
    from mlflow import MlflowClient

    names = {e.name for e in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()}
    assert {"binary-addition", "timeseries-sine"} <= names


@pytest.mark.parametrize("trainer,tasks,gpus", [("cpu", 1, None), ("ddp", 2, None), ("gpu", 1, 1), ("fsdp", 2, 2)])
def test_the_slurm_request_follows_the_trainer(trainer, tasks, gpus):
    """One task per device; GPUs per node only for GPU trainers (the key it read before existed nowhere)."""
    import dlzoo.cluster  # noqa: F401  (registers the resolver, as the launcher's callback import does)
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*SMOKE, "hydra/launcher=slurm", f"trainer={trainer}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["nodes"]) == (tasks, gpus, 1)
    assert {"dlzoo.cluster.SlurmRunTags", "dlzoo.cluster.TrackingStoreReady"} == {
        cb["_target_"] for cb in cfg.hydra.callbacks.values()}


def test_a_gpu_request_needs_a_device_count():
    from dlzoo.cluster import gpus_per_node

    assert gpus_per_node("cpu", "auto") is None
    with pytest.raises(ValueError, match="trainer.devices"):
        gpus_per_node("gpu", "auto")


def test_the_docs_concurrency_table_is_the_measurements():
    """docs/cluster.md's concurrent-writers table is the script's own output over the committed measurements."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "tracking_concurrency.py"), "--table",
                           str(REPO / "benchmarks" / "tracking_concurrency.jsonl")], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() in (REPO / "docs" / "cluster.md").read_text()


def test_make_server_takes_a_training_from_another_process(prepared, tmp_path):
    """`make server` as a node would use it: a smoke training with MLFLOW_TRACKING_URI=http://... logs its run,
    metrics and artifacts (uploaded through the server, tracking.artifact_root=null) into the server's store."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store, artifacts = tmp_path / "server.db", tmp_path / "artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    server = subprocess.Popen(["make", "--no-print-directory", "server", f"PORT={port}", "WORKERS=1",
                               f"SERVER_STORE=sqlite:///{store}", f"SERVER_ARTIFACTS={artifacts}"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("make server did not answer /health within 60 s")
        proc = subprocess.run([sys.executable, str(TRAIN), *SMOKE, "tracking.artifact_root=null", "hydra.run.dir=outputs/server",
                               f"paths.model_dir={tmp_path / 'model'}", f"paths.plots_dir={tmp_path / 'plots'}"],
                              cwd=prepared, env={**os.environ, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        from mlflow import MlflowClient

        client = MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("binary-addition").experiment_id])
        assert run.info.status == "FINISHED" and "val/loss" in run.data.metrics
        assert any(artifacts.rglob("learning_curve.csv"))   # uploaded through the server, into its artifact root
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
