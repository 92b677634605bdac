"""MLflow tracking: one experiment per task, one run per family and stage, rank 0 only."""

from dlzoo.tracking.mlflow_tracking import (  # noqa: F401
    artifact_location,
    client,
    ensure_experiment,
    flat_params,
    git_commit,
    resolve_tracking_uri,
    run_tags,
    start_run,
)
