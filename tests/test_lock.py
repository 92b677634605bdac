"""requirements.lock, the whole resolved environment `make venv` installs from, kept in step with pyproject.toml:
every pin of pyproject.toml (dependencies and extras) is the lock's version, and the venv holds what the lock says.
`make lock` writes it anew from a fresh environment after pyproject.toml changes."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version

from conftest import REPO

LOCK = REPO / "requirements.lock"


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0]).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"requirements.lock: {line!r} is not pinned with =="
            pins[_name(name)] = pinned.strip()
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        if _name(requirement) == "dlzoo":  # an extra naming another extra of this project
            continue
        assert "==" in requirement, f"pyproject.toml: {requirement!r} is not pinned"
        pins[_name(requirement)] = requirement.split("==", 1)[1].split(";")[0].strip()
    return pins


def test_the_lock_has_every_pyproject_pin_at_its_version():
    locked = _locked()
    mismatched = {name: (pinned, locked.get(name)) for name, pinned in _pyproject_pins().items()
                  if locked.get(name) != pinned}
    assert not mismatched, f"pyproject.toml pin != requirements.lock (run make lock): {mismatched}"
    assert "dlzoo" not in locked


def test_the_environment_is_the_lock():
    """What `make venv` installed is what the lock names, package by package."""
    different = {}
    for name, pinned in _locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            different[name] = (pinned, installed)
    assert not different, f"locked vs installed (make venv reinstalls from the lock): {different}"
