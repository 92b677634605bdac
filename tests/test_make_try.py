"""`make try` as a user types it on a fresh copy (nothing activated): it trains and evaluates the digits CNN on the
default profile, registers it as the task's champion, serves it on loopback and prints the answer to one test
image; the working tree and the project's store are left as they were."""

from __future__ import annotations

import re
import sqlite3

import pytest

from conftest import user_env
from test_make_repro import fresh_copy, seed_store, sh, store_aliases

# A real training (the cpu profile's budget): minutes, so it runs with the whole-pipeline check (`make test-e2e`).
pytestmark = pytest.mark.e2e


def test_make_try_answers_with_a_served_champion_and_spoils_nothing(tmp_path):
    dst = fresh_copy(tmp_path)
    main_store = seed_store(dst / "mlflow.db")
    out = sh("make", "try", cwd=dst, env=user_env(), timeout=900).stdout
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy >= 0.95, out[-2000:]   # a real result: the recipe's CNN on the held-out digits
    answer = re.search(r"answered:\n  \{(.*)\}", out).group(1)
    probabilities = {k: float(v) for k, v in re.findall(r"(\d): ([\d.]+)", answer)}
    assert sorted(probabilities) == [str(d) for d in range(10)] and sum(probabilities.values()) == pytest.approx(1, abs=0.01)
    assert re.search(r"predicted \d in \d+ s", out)

    assert sh("git", "status", "--porcelain", cwd=dst).stdout == ""
    assert store_aliases(dst / "mlflow.db") == main_store["aliases"]
    assert (dst / "mlflow.db").read_bytes() == main_store["bytes"]
    with sqlite3.connect(dst / "outputs/try/mlflow.db") as con:
        assert ("digits", "champion") in {r[:2] for r in con.execute("select name, alias, version from registered_model_aliases")}
