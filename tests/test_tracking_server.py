"""`make server` with basic auth (as it runs whenever it is bound beyond loopback; AUTH=1 here, on loopback): a
request without credentials is refused and changes nothing; a training whose job carries MLflow's client
credentials logs its run, metrics and artifacts through the server."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import REPO, user_env
from dlzoo.serve import wait_until_answering

ADMIN_PASSWORD = "admin-password-for-this-test-only"
USER, PASSWORD = "trainer", "trainer-password-for-this-test"


def _call(url: str, endpoint: str, body: dict | None = None, auth: tuple[str, str] | None = None):
    """(HTTP status, JSON answer) of one REST call."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", headers=headers,
                                     method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}


@pytest.fixture
def auth_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = user_env({"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    server = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "server", f"PORT={port}", "AUTH=1",
                               "WORKERS=1", f"SERVER_STORE=sqlite:///{tmp_path / 'mlflow.db'}",
                               f"SERVER_ARTIFACTS={tmp_path / 'mlartifacts'}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health", server, 180, "make server")
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert not (REPO / ".mlflow-auth.ini").exists()   # the settings went beside the test's store, not the repo's


def test_the_server_refuses_strangers_and_takes_a_signed_in_training(auth_server, tmp_path):
    url = auth_server
    admin = ("admin", ADMIN_PASSWORD)
    status, _ = _call(url, "experiments/create", {"name": "intruder"})
    assert status == 401
    status, _ = _call(url, "experiments/create", {"name": "intruder"}, auth=("admin", "a wrong password"))
    assert status == 401
    status, _ = _call(url, "experiments/get-by-name?experiment_name=intruder", auth=admin)
    assert status == 404   # the refused write changed nothing
    status, _ = _call(url, "users/create", {"username": USER, "password": PASSWORD}, auth=admin)
    assert status == 200

    # a smoke training on a node: the store is the server, the credentials are MLflow's client variables
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_STAGE")},
           "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    common = ["experiment=timeseries-sine-rnn", "profile=smoke", "hydra.run.dir=outputs/test"]
    for script, extra in (("prepare", ["data=timeseries-sine"]), ("train", ["tracking.artifact_root=null"])):
        done = subprocess.run([sys.executable, str(REPO / "pipelines" / f"{script}.py"), *common, *extra], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    status, found = _call(url, "experiments/get-by-name?experiment_name=timeseries-sine", auth=(USER, PASSWORD))
    assert status == 200
    status, runs = _call(url, "runs/search", {"experiment_ids": [found["experiment"]["experiment_id"]]},
                         auth=(USER, PASSWORD))
    (run,) = runs["runs"]
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"val/loss", "epoch"}
    status, listed = _call(url, f"artifacts/list?run_id={run['info']['run_id']}", auth=(USER, PASSWORD))
    assert status == 200 and {"config.yaml", "plots"} <= {f["path"] for f in listed["files"]}
    assert list((tmp_path / "mlartifacts").rglob("learning_curve.csv"))   # uploaded through the server
    status, _ = _call(url, f"artifacts/list?run_id={run['info']['run_id']}")
    assert status == 401   # and no stranger reads it
