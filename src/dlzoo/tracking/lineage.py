"""Which data and which DVC experiment a run belongs to, on the MLflow run (issue 15).

- The prepared data goes in as an MLflow dataset input (context `training`), named after the recipe's data
  (`data.name`), with the folder as its source and DVC's digest of it: the md5 that `dvc.lock` records for the
  stage output that wrote the folder (`<md5>.dir`), so the UI's Dataset column shows the same hash as
  `dvc status`/`dvc data status`. Run outside DVC (no `DVC_STAGE`, e.g. by hand or in the tests) or without a
  lock entry, the digest is an md5 over the folder's relative paths and contents (32 hex digits, no `.dir`), and
  the dataset's source says which of the two it is (`digest_of`).
- Under `dvc exp run`, DVC names the experiment in `DVC_EXP_NAME`: the run is tagged `dvc.exp_name`, the
  `dvc exp show` row it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LOCK_FILE = Path("dvc.lock")  # stages run from the repository root


def dvc_digest(path: str | Path, lock_file: Path = LOCK_FILE) -> str | None:
    """The md5 `dvc.lock` records for the stage output at `path`, or None."""
    if not lock_file.is_file():
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the lock is large; the C parser reads it in a blink
    stages = (yaml.load(lock_file.read_text(), Loader=loader) or {}).get("stages", {})
    wanted = Path(path).as_posix().rstrip("/")
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path", "").rstrip("/") == wanted and out.get("md5"):
                return out["md5"]
    return None


def content_digest(path: str | Path) -> str:
    """md5 over the relative paths and bytes of every file under `path`."""
    root, digest = Path(path), hashlib.md5()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def log_lineage(tracking_uri: str, run_id: str, data_name: str, data_dir: str | Path) -> dict:
    """Log the data input and the DVC experiment tag on `run_id`; returns what was logged."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from dlzoo.tracking import client

    # DVC checked the upstream stages before it started this one, so their lock entries are current
    digest = dvc_digest(data_dir) if os.environ.get("DVC_STAGE") else None
    digest_of = "dvc.lock" if digest else "files"
    digest = digest or content_digest(data_dir)
    dataset = Dataset(name=data_name, digest=digest, source_type="local",
                      source=json.dumps({"uri": str(Path(data_dir).resolve()), "digest_of": digest_of}))
    mlflow_client = client(tracking_uri)
    mlflow_client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
    logged = {"dataset": data_name, "digest": digest}
    if os.environ.get("DVC_EXP_NAME"):
        mlflow_client.set_tag(run_id, "dvc.exp_name", os.environ["DVC_EXP_NAME"])
        logged["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return logged
