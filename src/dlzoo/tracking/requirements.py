"""What a model logged pickled needs where it is served (issue 15): its code and its pinned requirements.

A pickle names the classes of the network's modules; unpickling imports their modules, and serving runs their
`forward`. So the requirements are the third-party distributions those `dlzoo` modules import anywhere in their
body (lazy imports included), followed through the project's own imports, plus the packages of the network's
non-project classes (e.g. torchvision's SSD head), each pinned to the installed version. `src/dlzoo` goes with
the model as MLflow `code_paths`, so a fresh environment with those requirements loads it without the project.
"""

from __future__ import annotations

import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

from dlzoo.imports import imported_modules

PACKAGE_DIR = Path(__file__).resolve().parents[1]   # src/dlzoo: the model's code_paths


def _project_file(module: str) -> Path | None:
    if module.split(".")[0] != PACKAGE_DIR.name:
        return None
    base = PACKAGE_DIR.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_roots(modules: set[str]) -> set[str]:
    """Top-level names of the non-project, non-standard-library modules that `modules` import, transitively
    through the project's modules (and their packages' `__init__`)."""
    roots, todo, seen = set(), list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _project_file(module)
        if path is None:
            root = module.split(".")[0]
            if root and root != PACKAGE_DIR.name and root not in sys.stdlib_module_names:
                roots.add(root)
            continue
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))   # importing a.b.c runs a and a.b
        todo.extend(imported_modules(path, module))
    return roots


def pickled_requirements(net) -> list[str]:
    """`name==version` for every distribution unpickling and running `net` imports, torch always among them."""
    modules = {type(m).__module__ for m in net.modules()}
    distributions = packages_distributions()
    pins = {"torch"}
    for root in imported_roots(modules) | {"torch"}:
        for dist in distributions.get(root, []):
            pins.add(dist)
    return sorted(f"{d}=={version(d).split('+')[0]}" for d in pins)
