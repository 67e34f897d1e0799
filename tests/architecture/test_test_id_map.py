"""tests/test_id_map.csv still points every old test id at a test that exists."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_mapped_test_exists():
    with open(REPO / "tests" / "test_id_map.csv", newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 1187
    defined: dict[str, set[str]] = {}
    for row in rows:
        path, _, name = row["new_id"].partition("::")
        if path not in defined:
            tree = ast.parse((REPO / path).read_text())
            defined[path] = {
                node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            }
        assert name.split("[")[0] in defined[path], row
