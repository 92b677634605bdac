"""What a source file imports, read from its syntax tree (nothing runs): the stage table's dependency closure
(dlzoo.stages) follows the project's modules, a pickled model's requirements (dlzoo.tracking.requirements) the
third-party ones."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def imported_modules(path: Path, module_name: str) -> frozenset[str]:
    """Every module `path` (the module `module_name`) imports anywhere in its body, function-level imports
    included (a lazy import still runs when the function does): `import x`, `from x import y` (both `x` and
    `x.y`, which may be a submodule), relative imports resolved against `module_name`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    current = module_name.split(".") if module_name else []
    package = current if path.name == "__init__.py" else current[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    found.discard("")
    return frozenset(found)
