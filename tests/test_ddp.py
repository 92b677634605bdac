"""2-process DDP on CPU over gloo: trains, and only rank 0 talks to MLflow (exactly one run)."""

import json

from conftest import mlflow_runs, prepare_data, run_entry


def test_ddp_on_cpu_makes_exactly_one_mlflow_run(workdir, make_cfg):
    prepare_data(make_cfg("experiment=binary-addition-rnn"))
    result = run_entry("train", "experiment=binary-addition-rnn", "trainer=ddp", "profile=smoke", "tracking.log_model=false", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = mlflow_runs(workdir / "mlflow.db")
    assert len(runs) == 1
    assert runs[0]["status"] == "FINISHED" and runs[0]["params"]["trainer.devices"] == "2"
    assert (workdir / "artifacts/models/binary-addition-rnn/best.ckpt").is_file()
    summary = json.loads((workdir / "artifacts/models/binary-addition-rnn/train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "DDPStrategy"
