"""JSON in and out, shared by every stage (a neutral home: data, training, evaluation and compression all write JSON)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as pretty JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
