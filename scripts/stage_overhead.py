"""Where a stage's seconds go: DVC's own work, the interpreter's start-up (imports), the stage's work, and the
interpreter's teardown after its last line.

For each stage: `dvc repro -f -s <stage>` (DVC's wall time, and the stage's own `done in X s (start-up Y s, work
Z s)` line), then the stage's command run directly (the process's wall time). Teardown is the process's wall time
less the stage's own total; DVC's share is DVC's wall time less the process's. Run it in a throwaway clone whose
upstream outputs exist (it re-runs the stages it names), with the venv's bin first on PATH:

    python scripts/stage_overhead.py --repo /tmp/clone prepare_binary-addition train_timeseries-sine-rnn [--repeat 2]
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

DONE = re.compile(r"done in ([\d.]+) s \(start-up ([\d.]+) s, work ([\d.]+) s\)")


def timed(args: list[str], cwd: Path, shell: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(args if not shell else " ".join(args), cwd=cwd, capture_output=True, text=True, shell=shell)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"error: {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return wall, out.stdout + out.stderr


def measure(repo: Path, stage: str, params: dict) -> dict:
    cmd = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    for key, value in params.items():
        cmd = cmd.replace("${" + key + "}", str(value))
    dvc_wall, log = timed(["dvc", "repro", "-f", "-s", stage], repo)
    total, startup, work = map(float, DONE.search(log).groups())
    cmd_wall, _ = timed(shlex.split(cmd), repo)
    return {"stage": stage, "dvc_wall": dvc_wall, "cmd_wall": cmd_wall, "startup": startup, "work": work,
            "teardown": max(cmd_wall - total, 0.0), "dvc": max(dvc_wall - cmd_wall, 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="+")
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load((args.repo / "params.yaml").read_text())
    print("| stage | `dvc repro -f -s` wall | command wall | start-up (imports) | work | teardown | DVC's own |")
    print("|---|---|---|---|---|---|---|")
    for stage in args.stages:
        runs = [measure(args.repo, stage, params) for _ in range(args.repeat)]
        cell = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "stage"}
        print(f"| `{stage}` | {cell['dvc_wall']:.1f} s | {cell['cmd_wall']:.1f} s | {cell['startup']:.1f} s | "
              f"{cell['work']:.1f} s | {cell['teardown']:.1f} s | {cell['dvc']:.1f} s |", flush=True)
    for label, cmd in (("dvc status", ["dvc", "status"]), ("dvc repro (nothing to do)", ["dvc", "repro"])):
        walls = [timed(cmd, args.repo)[0] for _ in range(args.repeat)]
        print(f"\n{label}: {statistics.median(walls):.1f} s (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
