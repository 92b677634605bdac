"""How many concurrent writers a tracking store stands: N processes each open a run and log metrics at once.

    python scripts/tracking_concurrency.py --uri sqlite:///tmp/c.db --writers 8 16 32
    make server &   python scripts/tracking_concurrency.py --uri http://127.0.0.1:5000 --writers 8 16 32
    python scripts/tracking_concurrency.py --table benchmarks/tracking_concurrency.jsonl   # the table in docs/cluster.md

Every writer logs `--steps` values of two metrics one call at a time (as Lightning's MLFlowLogger does each
epoch) and ends its run. A writer fails when any call raises (e.g. SQLite's "database is locked" once its
busy timeout runs out). Afterwards the parent reads every run back and counts runs and metric values that
are missing. One JSON line per writer count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid


def _writer(uri: str, experiment_id: str, index: int, steps: int, start, results) -> None:
    import os

    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run at" line per writer
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    start.wait()
    began = time.perf_counter()
    try:
        run = client.create_run(experiment_id, run_name=f"writer-{index}", tags={"writer": str(index)})
        client.log_param(run.info.run_id, "index", index)
        for step in range(steps):
            client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
            client.log_metric(run.info.run_id, "accuracy", step / steps, step=step)
        client.set_terminated(run.info.run_id, "FINISHED")
        results.put((index, run.info.run_id, None, time.perf_counter() - began))
    except Exception as exc:  # the measurement: any failure a writer sees is counted, not raised
        results.put((index, None, " ".join(str(exc).split())[:200], time.perf_counter() - began))


def measure(uri: str, writers: int, steps: int) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"concurrency-{writers}-{uuid.uuid4().hex[:8]}")
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, experiment_id, i, steps, start, results)) for i in range(writers)]
    for proc in procs:
        proc.start()
    time.sleep(5.0)  # let every writer import mlflow and connect, so the writes really overlap
    began = time.perf_counter()
    start.set()
    outcomes = [results.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - began
    for proc in procs:
        proc.join()
    errors = [error for _, _, error, _ in outcomes if error]
    missing_values = 0
    runs = client.search_runs([experiment_id], max_results=1000)
    for run in runs:
        for key in ("loss", "accuracy"):
            missing_values += steps - len(client.get_metric_history(run.info.run_id, key))
    return {"uri": uri.split("://")[0], "writers": writers, "steps": steps, "failed_writers": len(errors),
            "runs_recorded": len(runs), "finished_runs": sum(r.info.status == "FINISHED" for r in runs),
            "missing_metric_values": missing_values + 2 * steps * (writers - len(runs)),
            "wall_s": round(wall, 2), "writes_per_s": round(writers * (2 * steps + 3) / wall, 1),
            "first_error": errors[0] if errors else None}


STORES = {"sqlite": "SQLite file (`sqlite:///mlflow.db`)", "http": "`make server` (4 workers, SQLite behind it)"}


def table(path: str) -> str:
    """docs/cluster.md's markdown table from measurement lines (one row per store, writer counts side by side)."""
    rows: dict[str, list[dict]] = {}
    for line in open(path):
        if line.strip():
            result = json.loads(line)
            rows.setdefault(result["uri"], []).append(result)
    out = ["| store | writers | failed writers | runs recorded | metric values missing | writes/s |",
           "|---|---|---|---|---|---|"]
    for uri, results in rows.items():
        def col(key):
            return " / ".join(str(r[key]) for r in results)
        complete = all(r["runs_recorded"] == r["writers"] for r in results)
        out.append(f"| {STORES.get(uri, uri)} | {col('writers')} | {col('failed_writers')} | "
                   f"{'all' if complete else col('runs_recorded')} | {sum(r['missing_metric_values'] for r in results)} | "
                   f"{' / '.join(str(round(r['writes_per_s'])) for r in results)} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri")
    parser.add_argument("--writers", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of earlier measurements")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.uri:
        parser.error("--uri is required to measure")
    for writers in args.writers:
        line = json.dumps(measure(args.uri, writers, args.steps))
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
