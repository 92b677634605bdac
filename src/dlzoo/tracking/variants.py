"""One lineage per family in the tracking store, written by the `champions` stage after the evaluate and
compress stages:

- every evaluate and compress run nests under the train run it measured (the tag `mlflow.parentRunId`, from the
  `train_run_id` / `parent_run_id` tag the stage wrote), so the train run's page in the MLflow UI lists its
  held-out evaluation and each compressed variant, and the runs table shows them folded under it;
- every task's experiment is tagged as model training (`mlflow.experimentKind`), which MLflow 3's UI reads to
  open it on the runs table rather than the GenAI overview of traces and prompts;
- each compressed variant's latest compress run is registered as a version of `<task>-<family>-<method>` (its
  source: the run's `compressed/` artifacts, the network's safetensors and, where exported, its ONNX file), with
  version tags: the task's headline metric, the size and latency columns the compression report has, the
  method, and the parent's registered model and run, so the registry lists the variants beside the families.

Nesting afterwards rather than at run creation: the link needs the train run to exist in this store, which
only the end of the pipeline knows (a train stage may have run on another machine, or its store may have been
reset), and doing it here keeps the evaluate and compress stages' code, and so their DVC hashes, unchanged.
A run whose train run is not in this store is left top-level and counted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("dlzoo")

# The experiment tag MLflow 3's UI reads to open an experiment on its runs table, not on its GenAI overview
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"   # MLflow's own nesting tag: the UI folds a run under this one
SOURCE_TAGS = {"evaluate": "train_run_id", "compress": "parent_run_id"}
# The compression report's cost columns, as version tags when the variant's metrics have them
COST_KEYS = ("size_mb", "size_ratio", "num_params", "nonzero_params", "latency_ms_b1", "latency_ms_b32",
             "speedup_b1", "speedup_b32")


def _tag_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def nest_runs(client, experiment_ids: list[str]) -> dict[str, int]:
    """Set `mlflow.parentRunId` on every evaluate and compress run whose train run is in the store."""
    counts = {"nested": 0, "orphans": 0}
    for stage, source in SOURCE_TAGS.items():
        runs = client.search_runs(experiment_ids, f"tags.stage = '{stage}'", max_results=50000)
        known: dict[str, bool] = {}
        for run in runs:
            parent = run.data.tags.get(source, "")
            if not parent:
                counts["orphans"] += 1
                continue
            if parent not in known:
                try:
                    known[parent] = client.get_run(parent).data.tags.get("stage") == "train"
                except Exception:   # noqa: BLE001 - MlflowException: a run of another store
                    known[parent] = False
            if not known[parent]:
                counts["orphans"] += 1
            elif run.data.tags.get(PARENT_TAG) != parent:
                client.set_tag(run.info.run_id, PARENT_TAG, parent)
                counts["nested"] += 1
    return counts


def register_variants(client, task: str, entry: dict, metrics_dir: Path, experiment_id: str) -> list[str]:
    """Register each compressed variant of `task` with a metrics file (its compress stage ran) as a version of
    `<task>-<family>-<method>`; returns the names registered or updated. Its latest FINISHED compress run in the
    store is the version's run; a run already registered is not registered again (its tags are refreshed)."""
    from mlflow.exceptions import MlflowException

    runs = client.search_runs([experiment_id], "tags.stage = 'compress' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50000)
    latest: dict[tuple[str, str], object] = {}
    for run in runs:
        key = (run.data.tags.get("family", ""), run.data.tags.get("method", ""))
        latest.setdefault(key, run)   # newest first
    done = []
    for (family, method), run in sorted(latest.items()):
        metrics_file = metrics_dir / task / f"{family}-{method}.json"
        if family not in entry["families"] or not method or not metrics_file.is_file():
            continue   # a variant this pipeline no longer has
        values = json.loads(metrics_file.read_text())
        keys = [entry["metric"], *([entry["latency"]] if entry.get("latency") else []), *COST_KEYS]
        tags = {k: _tag_text(float(values[k])) for k in dict.fromkeys(keys) if isinstance(values.get(k), (int, float))}
        tags.update({"method": method, "parent_model": f"{task}-{family}", "metrics_file": str(metrics_file),
                     "parent_run_id": run.data.tags.get("parent_run_id", ""), "compress_run_id": run.info.run_id,
                     "format": "compressed/: model.safetensors (the family's network, dlzoo.compression.save_model)"
                               " and model.onnx where the method exports one"})
        name = f"{task}-{family}-{method}"
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, tags={"task": task, "family": family, "method": method},
                                           description=f"{method} of {task}-{family} (compress stage)")
        versions = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run.info.run_id]
        version = versions[0] if versions else client.create_model_version(
            name, source=f"runs:/{run.info.run_id}/compressed", run_id=run.info.run_id)
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        done.append(name)
    return done


def publish_lineage(tasks: dict[str, dict], metrics_dir: Path, tracking_uri: str) -> dict:
    """Nest the evaluate and compress runs of every task's experiment and register its compressed variants."""
    from dlzoo.tracking import client as tracking_client

    client = tracking_client(tracking_uri)
    experiments = {t: client.get_experiment_by_name(t) for t in tasks}
    experiments = {t: e for t, e in experiments.items() if e is not None}
    for experiment in experiments.values():   # MLflow 3's UI opens such an experiment on its runs table
        if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    counts = nest_runs(client, [e.experiment_id for e in experiments.values()]) if experiments else {"nested": 0, "orphans": 0}
    variants = [name for t, e in sorted(experiments.items())
                for name in register_variants(client, t, tasks[t], metrics_dir, e.experiment_id)]
    log.info("lineage: %d evaluate/compress runs nested under their train runs (%d without one in this store); "
             "%d compressed variants registered", counts["nested"], counts["orphans"], len(variants))
    return {**counts, "variants": variants}
