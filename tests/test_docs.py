"""The docs a newcomer reads: the site builds with `mkdocs build --strict` (a broken link or anchor, or a page left out
of the nav, fails it), README.md stays a short reference whose links all lead somewhere, and the code passes ruff."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO

README_MAX_LINES = 260


def test_the_docs_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's end-of-life banner is noise here
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"


def test_the_readme_is_short_and_its_links_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link) and link[0] != "#"]
    assert relative, "no relative links found in README.md"
    missing = sorted({link for link in relative if not (REPO / link).exists()})
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_code_passes_the_linter():
    """ruff with the project's rules (pyproject.toml: unused and undefined names, syntax errors)."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "scripts", "pipelines"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
