"""`make server`: the tracking server cluster nodes log to, closed to anyone without an account once it is reachable
beyond this machine.

- Bound to loopback (the default `HOST=127.0.0.1`), only this machine's users reach it: a plain `mlflow server`.
- Bound to any other address (`make server HOST=0.0.0.0`), or with `AUTH=1`, it runs MLflow's basic-auth app
  (`--app-name basic-auth`, the `mlflow[auth]` extra): every request needs a user and password, and an
  unauthenticated write is answered 401. Its users live in `mlflow-auth.db` beside the store.
- The admin's credentials come from the environment (`MLFLOW_AUTH_ADMIN_USERNAME`, `MLFLOW_AUTH_ADMIN_PASSWORD`) or
  from the file `.mlflow-credentials` (KEY=value lines, ignored by git); MLflow has no default password, so the
  server refuses to start without one. Training jobs authenticate with MLflow's own client variables,
  `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`, beside `MLFLOW_TRACKING_URI`.

    python -m dlzoo.tracking.server --host 0.0.0.0 --port 5000 --store sqlite:///mlflow.db --artifacts mlartifacts
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CREDENTIALS_FILE = Path(".mlflow-credentials")
# Signed-in users may log into any experiment of the team's store; deleting and re-permissioning stay with a
# resource's creator and the admin (MLflow's MANAGE).
DEFAULT_PERMISSION = "EDIT"


def read_credentials(path: Path) -> dict[str, str]:
    """KEY=value lines of `path` (blank lines and # comments skipped); {} when it does not exist."""
    if not path.is_file():
        return {}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: {path}:{number}: expected KEY=value")
        values[key.strip()] = value.strip()
    return values


def auth_config(path: Path, database_uri: str) -> Path:
    """MLflow's basic-auth settings file (MLFLOW_AUTH_CONFIG_PATH): its user store and default permission; the
    admin's name and password stay in the environment, never in a file this writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[mlflow]\n"
                    f"default_permission = {DEFAULT_PERMISSION}\n"
                    f"database_uri = {database_uri}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def command(host: str, port: int, store: str, artifacts: str, workers: int, auth: bool) -> list[str]:
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    argv = [mlflow_cli, "server", "--backend-store-uri", store, "--artifacts-destination", artifacts,
            "--host", host, "--port", str(port), "--workers", str(workers)]
    return argv + (["--app-name", "basic-auth"] if auth else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlzoo.tracking.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--store", default=f"sqlite:///{Path('mlflow.db').resolve()}")
    parser.add_argument("--artifacts", default=str(Path("mlartifacts").resolve()))
    parser.add_argument("--auth", action="store_true", help="basic auth on loopback too (off the loopback it is always on)")
    parser.add_argument("--credentials", type=Path, default=CREDENTIALS_FILE,
                        help="KEY=value file with MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD (the environment wins)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    auth = args.auth or args.host not in LOOPBACK
    if auth:
        try:
            import flask_wtf  # noqa: F401 - the basic-auth app's CSRF protection
        except ImportError:
            print("error: the basic-auth server needs the mlflow[auth] extra (Flask-WTF); run make venv", file=sys.stderr)
            return 2
        for key, value in read_credentials(args.credentials).items():
            env.setdefault(key, value)
        env.setdefault("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
        if not env.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            print(f"error: a server reachable from {args.host} needs an admin password: set MLFLOW_AUTH_ADMIN_PASSWORD "
                  f"or write it to {args.credentials} (MLFLOW_AUTH_ADMIN_PASSWORD=...)", file=sys.stderr)
            return 2
        # the CSRF key every worker must share; a new one each start only ends the UI's open sessions
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        users = Path(args.store.removeprefix("sqlite:///")).with_name("mlflow-auth.db") \
            if args.store.startswith("sqlite:///") else Path("mlflow-auth.db").resolve()
        ini = auth_config(users.with_name(".mlflow-auth.ini"), f"sqlite:///{users}")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        print(f"tracking server with basic auth on http://{args.host}:{args.port} (users in {users}; clients set "
              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)", flush=True)
    argv_ = command(args.host, args.port, args.store, args.artifacts, args.workers, auth)
    os.execve(argv_[0], argv_, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
