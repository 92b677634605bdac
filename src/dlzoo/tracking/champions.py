"""Champions: after the evaluate stages, each task's best family by the headline metric its recipes declare
(`results.metric`, `results.mode`) gets the registered-model alias `champion`, and every family's registered
version carries the held-out numbers its evaluate stage measured.

- The choice is read from `metrics/<task>/<family>.json` (the evaluate stages' files; the tasks' baselines are
  not registered models and do not compete) and written to `metrics/champions.json`, which DVC tracks.
- In the tracking store, for the version of each family's registered model `<task>-<family>` that the evaluate
  stage measured (the trained version whose run is the `train_run_id` of the newest finished evaluate run with
  the metrics file's headline value: the run id the model folder recorded when that checkpoint was evaluated;
  never simply the newest version, which may be a smoke or hand-registered one):
  - version tags: the task's results columns (headline, `results.columns`, `results.latency`) and `metrics_file`;
  - the same numbers as metrics of the version's MLflow 3 logged model (`model_id`), logged on its train run,
    so the run's and the model's pages show them beside the training curves (a number already there is not
    logged again; a changed one is a new point);
  - the alias `champion` on the task's best family, removed from the others.
- One stable address per task: the registered model `<task>` gets a version with the champion's source, tagged
  with its `family`, the held-out numbers and the family version it copies, and the alias `champion`; so
  `models:/<task>@champion` is served without knowing which family won.
- For the tasks in `champions.probabilities` (classifiers), `champions.actions` (policies), `champions.forecasts`
  and `champions.texts` (translators), the alias goes to a version that answers class probabilities, the greedy
  action, the next values or text: `dlzoo.tracking.probabilities` wraps the champion's trained version (made once
  per trained version), so `mlflow models serve -m models:/<task>@champion` answers what a user asks for.
- A family without a measured version in this store (its train stage ran elsewhere, its evaluate run is not
  here, or `tracking.register_model=false`) is named in one log line, and no alias moves for it; the choice is
  still written.
- Profile-only tasks (`only_profile`) are left out: their stages live in another pipeline file.
- Then the lineage (dlzoo.tracking.variants): evaluate and compress runs nested under their train runs, and each
  compressed variant registered as `<task>-<family>-<method>` with its size, latency and metric as tags.

    python pipelines/champions.py        (the `champions` stage; `models:/<task>@champion` afterwards)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from omegaconf import OmegaConf

from dlzoo.errors import ConfigError
from dlzoo.io import write_json

log = logging.getLogger("dlzoo")

ALIAS = "champion"


def choose(tasks: dict[str, dict], metrics_dir: Path) -> dict[str, dict]:
    """task -> {family, metric, mode, value, runner_up, runner_up_value, families: {family: value},
    metrics: {family: its whole metrics file}} over the families with a metrics file and a finite headline
    value; ties go to the first family in name order. Tasks with none are left out."""
    chosen = {}
    for task, entry in sorted(tasks.items()):
        metric, mode = entry["metric"], entry["mode"]
        values, files = {}, {}
        for family in sorted(entry["families"]):
            path = metrics_dir / task / f"{family}.json"
            if path.is_file():
                files[family] = json.loads(path.read_text())
                value = files[family].get(metric)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    values[family] = float(value)
        if not values:
            continue
        # best first; equals keep name order. The runner-up is written beside the choice, because a headline
        # measured on a few hundred test examples often separates families by less than its own noise.
        ranked = sorted(values, key=lambda f: -values[f] if mode == "max" else values[f])
        best = ranked[0]
        chosen[task] = {"family": best, "metric": metric, "mode": mode, "value": values[best], "families": values,
                        "metrics": {f: files[f] for f in values},
                        "runner_up": ranked[1] if len(ranked) > 1 else None,
                        "runner_up_value": values[ranked[1]] if len(ranked) > 1 else None}
    return chosen


def logged_model_id(version) -> str | None:
    """The MLflow 3 logged model behind a registered version: `version.model_id`, which the SQLite store leaves
    empty for versions made by `log_model(registered_model_name=...)`, else the id in its `models:/m-...` source."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def measured_version(client, experiment_id: str | None, family: str, metric: str, value: float, versions: list):
    """The trained version behind the number in the metrics file: the newest FINISHED evaluate run of `family`
    whose headline equals `value` names the train run (`train_run_id`, read from the model folder's
    train_summary.json by the evaluate stage), and the version that run registered is the one measured.
    None when no such run or version is in this store."""
    if experiment_id is None:
        return None
    by_run = {v.run_id: v for v in versions if v.run_id}
    runs = client.search_runs([experiment_id], f"tags.stage = 'evaluate' and tags.family = '{family}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1000)
    for run in runs:
        logged = run.data.metrics.get(metric)
        if logged is not None and math.isclose(logged, value, rel_tol=1e-9, abs_tol=1e-12):
            return by_run.get(run.data.tags.get("train_run_id", ""))
    return None


def _tag_text(value: float) -> str:
    """Counts as integers, measurements to 6 significant digits."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def publish_task_model(client, task: str, family: str, served, tags: dict[str, str]):
    """The registered model `<task>`: a version with the source of `served` (a version of `<task>-<family>`),
    made once per served version, tagged and given the alias `champion`; returns it."""
    from mlflow.exceptions import MlflowException

    source_model = f"{served.name}/{served.version}"
    try:
        client.get_registered_model(task)
    except MlflowException:
        client.create_registered_model(task, tags={"task": task}, description=(
            f"The champion of {task}: the best evaluated family, a copy of its version in {task}-<family>"))
    existing = [v for v in client.search_model_versions(f"name='{task}'")
                if (v.tags or {}).get("dlzoo.source_model") == source_model]
    version = existing[0] if existing else client.create_model_version(
        task, source=served.source, run_id=served.run_id, model_id=logged_model_id(served),
        tags={"dlzoo.source_model": source_model})
    for key, text in {**tags, "family": family}.items():
        client.set_model_version_tag(task, version.version, key, text)
    client.set_registered_model_alias(task, ALIAS, version.version)
    return version


def publish(chosen: dict[str, dict], tasks: dict[str, dict], tracking_uri: str,
            answers: dict[str, tuple[str, list]] | None = None) -> dict[str, list]:
    """Tag every family's measured version with its numbers and move the `champion` aliases (for a task in
    `answers`, {task: (kind, model_config or family -> model_config)}, to the champion's answer version:
    dlzoo.tracking.probabilities.ANSWERS), on `<task>-<family>` and on `<task>`; returns
    {"published": [...], "missing": [...]} registered-model names."""
    from dlzoo.tracking import client as tracking_client
    from dlzoo.tracking.probabilities import trained_versions, wrapper_of

    client = tracking_client(tracking_uri)
    answers = answers or {}
    done: dict[str, list] = {"published": [], "missing": []}
    for task, choice in chosen.items():
        entry = tasks[task]
        keys = [entry["metric"], *entry["columns"], *([entry["latency"]] if entry.get("latency") else [])]
        experiment = client.get_experiment_by_name(task)
        for family, value in choice["families"].items():
            name = f"{task}-{family}"
            versions = trained_versions(client.search_model_versions(f"name='{name}'"))
            version = measured_version(client, experiment.experiment_id if experiment else None, family,
                                       entry["metric"], value, versions)
            if version is None:
                done["missing"].append(name)
                continue
            values = choice["metrics"][family]
            shown = {k: float(values[k]) for k in keys if isinstance(values.get(k), (int, float))}
            tags = {**{k: _tag_text(v) for k, v in shown.items()}, "metrics_file": f"metrics/{task}/{family}.json"}
            served = version
            if family == choice["family"] and task in answers:
                kind, config = answers[task]
                config = config(family) if callable(config) else config
                if config is not None:
                    served = wrapper_of(task, family, version, config, tracking_uri, client, kind)
            for tagged in {version.version: version, served.version: served}.values():
                for key, text in tags.items():
                    client.set_model_version_tag(name, tagged.version, key, text)
            model_id = logged_model_id(version)
            if model_id and version.run_id:
                # only numbers the model does not carry yet: re-publishing an unchanged evaluation adds no point
                latest = {}
                for m in sorted(client.get_logged_model(model_id).metrics or [], key=lambda m: m.timestamp):
                    latest[m.key] = m.value
                for key, number in shown.items():
                    if latest.get(key) != number:
                        client.log_metric(version.run_id, key, number, step=0, model_id=model_id)
            aliases = client.get_registered_model(name).aliases
            if family == choice["family"]:
                client.set_registered_model_alias(name, ALIAS, served.version)
                publish_task_model(client, task, family, served, tags)
                done["published"].append(task)
            elif ALIAS in aliases:
                client.delete_registered_model_alias(name, ALIAS)
            done["published"].append(name)
    return done


def forecast_config(task: str, family: str) -> dict | None:
    """A forecaster's window and the training part's mean and standard deviation, from its recipe's data module
    (the prepare stage's folder); None, with a log line, when that folder is not here."""
    from dlzoo.data.timeseries import ForecastDataModule
    from dlzoo.errors import DlzooError
    from dlzoo.stages import Composer

    cfg, _ = Composer().compose("config", [f"experiment={task}-{family}"])
    try:
        module = ForecastDataModule(data_dir=cfg.data.module.data_dir, window=cfg.data.module.window)
        module.setup("fit")
    except (DlzooError, OSError) as exc:
        log.info("%s: served without its scaling (%s)", task, exc)
        return None
    return {"window": int(module.window), "mean": float(module.mean), "std": float(module.std)}


def champions(cfg) -> dict:
    """The `champions` stage: choose, write metrics/champions.json, publish to the store."""
    from dlzoo.results import BASELINES, task_tables
    from dlzoo.tracking import resolve_tracking_uri
    from dlzoo.tracking.probabilities import STRUCTURED
    from dlzoo.tracking.variants import publish_lineage

    metrics_dir = Path(cfg.champions.metrics_dir)
    tasks = {t: e for t, e in task_tables().items() if not e["only_profile"]}
    for entry in tasks.values():  # baselines are not registered models
        entry["families"] = [f for f in entry["families"] if f not in BASELINES]
    answers: dict[str, tuple] = {}
    kinds = (("probabilities", "classes"), ("actions", "actions"), ("forecasts", None), ("texts", "beam"),
             *((kind, None) for kind in STRUCTURED))
    for kind, key in kinds:
        listed = cfg.champions.get(kind)
        listed = OmegaConf.to_container(listed) if listed is not None else {}
        unknown = sorted(set(listed) - set(tasks))
        if unknown:
            raise ConfigError(f"champions.{kind} names tasks no recipe has: {', '.join(unknown)}")
        for task in listed:
            if kind == "forecasts":
                config = lambda family, task=task: forecast_config(task, family)  # noqa: E731
            elif kind in STRUCTURED:
                config = {}
            elif kind == "texts":
                config = {key: int(listed[task])}
            else:
                config = {key: list(listed[task])}
            answers[task] = (kind, config)
    chosen = choose(tasks, metrics_dir)
    keep = ("family", "metric", "mode", "value", "runner_up", "runner_up_value")
    write_json(Path(cfg.champions.out_file), {t: {k: c[k] for k in keep} for t, c in chosen.items()})
    uri = resolve_tracking_uri(cfg.tracking.uri)
    done = publish(chosen, tasks, uri, answers)
    lineage = publish_lineage(tasks, metrics_dir, uri)
    for task, choice in chosen.items():
        log.info("champion of %s: %s (%s = %.4g)", task, choice["family"], choice["metric"], choice["value"])
    if done["missing"]:
        log.info("no measured version in %s (no evaluate run whose headline is the metrics file's, or its train "
                 "run registered nothing; no alias moved for these): %s", uri, ", ".join(done["missing"]))
    return {"chosen": chosen, **done, "lineage": lineage}
