"""The GPU check script (scripts/gpu_check.py) in its dry mode: every check's config composes and resolves,
its model and DataModule build, so the script cannot rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_every_gpu_check_composes_and_builds():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gpu_check import CHECKS
    finally:
        sys.path.pop(0)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r["check"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(CHECKS)
    assert {"gpu-32-true", "gpu-bf16-mixed", "ddp-1gpu-nccl", "fsdp-1gpu"} <= set(results)
    assert all(r["accelerator"] == "gpu" and r["built"] for r in results.values())
    assert results["gpu-bf16-mixed"]["precision"] == "bf16-mixed"
    assert results["gpu-32-true"]["precision"] == "32-true"


def test_without_a_gpu_the_real_run_refuses_in_one_line(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the real checks run instead")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: no CUDA GPU visible; use --dry on a machine without one"
