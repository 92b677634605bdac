"""`make serve`: `mlflow models serve` on a registered model of the project's store, from a shell with nothing
activated.

    make serve TASK=digits                         # models:/digits@champion on http://127.0.0.1:5001
    make serve MODEL=models:/digits-cnn/1          # any registered version or alias
    python -m dlzoo.serve --task digits --port 5001

MLflow's scoring server starts `uvicorn` by name, so the virtualenv's bin folder goes first on PATH here: without
it a shell with nothing activated ends with "command not found". A model the store does not have is a one-line
error naming it, before any server starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from dlzoo.errors import ConfigError

DEFAULT_STORE = "sqlite:///mlflow.db"
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))")


def model_uri(task: str | None, model: str | None) -> str:
    """The URI to serve: `models:/<task>@champion` for a task, else `model` as given."""
    if bool(task) == bool(model):
        raise ConfigError("name a task (make serve TASK=digits) or a model (make serve MODEL=models:/digits-cnn/1)")
    return f"models:/{task}@champion" if task else str(model)


def check_model(uri: str, tracking_uri: str):
    """The registered version `uri` names; ConfigError (one line) when the store has no such model."""
    from mlflow.exceptions import MlflowException

    from dlzoo.tracking import client, resolve_tracking_uri

    match = _MODEL_URI.fullmatch(uri)
    if not match:
        raise ConfigError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    resolved = resolve_tracking_uri(tracking_uri)
    if resolved.startswith("sqlite:///") and not Path(resolved.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{tracking_uri}: no such store (make repro, or make try for outputs/try/mlflow.db, makes one)")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    store = client(resolved)
    try:
        if match["alias"]:
            return store.get_model_version_by_alias(match["name"], match["alias"])
        return store.get_model_version(match["name"], match["version"])
    except MlflowException:
        hint = " (make repro runs the champions stage that sets it)" if match["alias"] == "champion" else ""
        raise ConfigError(f"{uri}: no such registered model version in {tracking_uri}{hint}") from None


def server_env(tracking_uri: str) -> dict[str, str]:
    """This process's environment with the interpreter's bin folder first on PATH and the store named."""
    from dlzoo.tracking import resolve_tracking_uri

    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    env["MLFLOW_TRACKING_URI"] = resolve_tracking_uri(tracking_uri)
    return env


def wait_until_answering(url: str, process, timeout: float, what: str) -> None:
    """Poll `url` until the server answers (any HTTP status counts: an auth server refuses, but it is up); a
    RuntimeError with the tail of the process's stderr if it ends first, or when `timeout` seconds pass."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{what} ended: {process.stderr.read()[-2000:] if process.stderr else ''}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s") from None
            time.sleep(0.5)


def server_command(uri: str, host: str, port: int) -> list[str]:
    """`mlflow models serve` with the project's own environment (`--env-manager local`: no conda, no download)."""
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    return [mlflow_cli, "models", "serve", "-m", uri, "--env-manager", "local", "-h", host, "-p", str(port)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlzoo.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="serve models:/<task>@champion, e.g. digits")
    parser.add_argument("--model", help="serve this registered model URI, e.g. models:/digits-cnn/1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_STORE),
                        help="the store (default: MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    args = parser.parse_args(argv)
    try:
        uri = model_uri(args.task, args.model)
        version = check_model(uri, args.tracking_uri)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    family = (version.tags or {}).get("family", "")
    print(f"serving {uri} (version {version.version}{', family ' + family if family else ''}) on "
          f"http://{args.host}:{args.port}/invocations", flush=True)
    command = server_command(uri, args.host, args.port)
    os.execve(command[0], command, server_env(args.tracking_uri))
    return 0  # not reached: the server replaces this process


if __name__ == "__main__":
    sys.exit(main())
