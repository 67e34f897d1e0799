"""Writing the launch tables' JSON files from a sweep (``--write-table PATH``).

The files are the package's ``routing/tables/*.json`` and ``fused_router/tables/fused.json``
(schema: ``vllm_gemma4_router.routing.table_files``). A sweep updates the rows it
covered in a base table (``PATH`` if it exists, else the packaged one), adds its own
provenance entry (the command line, device, versions and date of the run, the raw
results it wrote) and points those rows at it; the file written is then read back
with the runtime's own loader, so a table that would not load is never left behind
unnoticed. Copy it over the packaged file to ship it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Version keys of ``benchmarks.common.timing.environment_stamp`` a table records.
VERSION_KEYS = ("driver", "runtime", "cuda", "torch", "triton")


def sweep_entry(
    stamp: Mapping[str, str], tag: str, results: Sequence[str | Path], notes: str
) -> dict[str, Any]:
    """A provenance entry for a sweep run with the flat environment ``stamp``
    (``timing.environment_stamp()``): its command line, device, versions and date."""
    device = stamp.get("gpu") or stamp.get("device") or "unknown device"
    date = stamp.get("date", "")
    sweep_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(filter(None, [device, date[:10], tag])))
    return {
        "id": sweep_id,
        "sweep": [stamp.get("argv", "")],
        "device": device,
        "versions": {k: stamp[k] for k in VERSION_KEYS if stamp.get(k)},
        "date": date,
        "results": [str(path) for path in results],
        "notes": notes,
    }


def add_sweep(data: dict[str, Any], entry: dict[str, Any]) -> str:
    """Append ``entry`` to ``data``'s provenance (its id made unique); returns the id."""
    sweeps = data["provenance"]["sweeps"]
    taken = {s["id"] for s in sweeps}
    base, n = entry["id"], 1
    while entry["id"] in taken:
        n += 1
        entry["id"] = f"{base}_{n}"
    sweeps.append(entry)
    return entry["id"]


def choose(timings: Mapping[Hashable, Mapping[Hashable, float]]) -> Hashable | None:
    """The config (key of ``timings``: config -> {point: us}) with the smallest geometric
    mean, over its points, of its time over the best time at that point. Only the
    configs timed at the most points compete; ties go to the first."""
    if not timings:
        return None
    best: dict[Hashable, float] = {}
    for times in timings.values():
        for point, us in times.items():
            best[point] = min(us, best.get(point, math.inf))
    most = max(len(times) for times in timings.values())

    def score(item):
        times = item[1]
        return math.fsum(math.log(us / best[p]) for p, us in times.items()) / len(times)

    return min((item for item in timings.items() if len(item[1]) == most), key=score)[0]


def dump_table(data: Mapping[str, Any]) -> str:
    """``data`` as the table files are written: indented, one line per row."""
    parts = []
    for key, value in data.items():
        if key == "rows":
            text = "[\n" + ",\n".join("    " + json.dumps(row) for row in value) + "\n  ]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def base_table(path: Path, packaged: Callable[[], str]) -> dict[str, Any]:
    """The table a sweep updates: ``path`` if it exists, else the packaged file's text."""
    return json.loads(path.read_text() if path.exists() else packaged())


def write_table(path: Path, data: Mapping[str, Any], load: Callable[[Path], object]) -> None:
    """Write ``data`` to ``path`` and read it back with the runtime's loader ``load``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_table(data))
    load(path)


def parse_config(text: str) -> dict[str, Any]:
    """``{field: value}`` of a sweep CSV's ``config`` cell (``k=v, ...`` of Python literals)."""
    import ast

    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
