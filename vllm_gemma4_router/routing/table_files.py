"""The launch tables' JSON files: read once at import, checked against their schema.

A table file is package data (``routing/tables/*.json``, ``fused_router/tables/*.json``)::

    {"schema": 1, "table": "<kind>",
     "provenance": {"notes": "...", "sweeps": [{"id", "sweep", "device", "versions",
                                                "date", "results", "notes"}, ...]},
     "token_bucket_bounds": [...], "rows": [{..., "provenance": "<sweep id>"}, ...]}

Every row names the sweep (or the offline study) it comes from; the runtime reads
only the rows. A file that is missing, is not JSON or does not match its schema
raises :class:`LaunchTableError` naming the file and what is wrong, at import.
The fused-router policy (``integration/tables/``) reads its file and checks its
provenance with the same :func:`read_json` and :func:`check_sweeps`.
"""

from __future__ import annotations

import json
import typing
from typing import Any, Protocol

SCHEMA = 1

#: Every sweep entry of a table's provenance: what ran, where, with which versions,
#: when, the raw results it wrote (paths under ``benchmarks/results/``) and why.
SWEEP_FIELDS: dict[str, type] = {
    "id": str,
    "sweep": list,
    "device": str,
    "versions": dict,
    "date": str,
    "results": list,
    "notes": str,
}
#: The kernel revision a sweep measured, where it was not the current one.
SWEEP_OPTIONAL: dict[str, type] = {"kernel": str}


class LaunchTableError(ValueError):
    """A launch table file that cannot be read or does not match its schema."""


class Source(Protocol):
    """A file to read: a ``pathlib.Path`` or an ``importlib.resources`` traversable."""

    def read_text(self, encoding: str = ...) -> str: ...


def fail(name: str, where: str, what: str) -> typing.NoReturn:
    raise LaunchTableError(f"launch table {name}: {where}: {what}")


def check_fields(
    name: str,
    where: str,
    value: Any,
    required: dict[str, type],
    optional: dict[str, type] | None = None,
) -> dict[str, Any]:
    """``value`` as a dict holding every ``required`` key, no key beyond ``optional``, each
    of its type (``bool`` is not an ``int`` here); raises :class:`LaunchTableError`."""
    optional = optional or {}
    if not isinstance(value, dict):
        fail(name, where, f"expected an object, got {type(value).__name__}")
    missing = sorted(set(required) - set(value))
    unknown = sorted(set(value) - set(required) - set(optional))
    if missing or unknown:
        fail(name, where, f"missing keys {missing}, unknown keys {unknown}")
    for key, item in value.items():
        expected = required.get(key) or optional[key]
        same = (
            type(item) is expected if expected in (int, bool, str) else isinstance(item, expected)
        )
        if not same:
            fail(name, f"{where}.{key}", f"expected {expected.__name__}, got {item!r}")
    return value


def config_from(name: str, where: str, value: Any, cls: type) -> Any:
    """``cls(**value)`` for a config class (dataclass or NamedTuple of int/bool/str fields),
    every field given with its annotated type."""
    fields = {k: v for k, v in typing.get_type_hints(cls).items() if not k.startswith("_")}
    return cls(**check_fields(name, where, value, fields))


def read_table(
    source: Source, table: str, row_fields: dict[str, type], more: dict[str, type] | None = None
) -> dict[str, Any]:
    """The checked top level of the table file ``source`` of kind ``table``: schema,
    provenance (every row's ``provenance`` names one of its sweeps), strictly rising
    positive ``token_bucket_bounds``, ``rows`` of ``row_fields`` (plus ``notes``) and the
    table's ``more`` top-level keys. The caller checks what is in the rows."""
    name, data = read_json(source)
    top = {"schema": int, "table": str, "provenance": dict, "token_bucket_bounds": list}
    check_fields(name, "top level", data, {**top, "rows": list, **(more or {})})
    if data["schema"] != SCHEMA or data["table"] != table:
        fail(name, "top level", f"expected schema {SCHEMA} of table {table!r}")
    ids = check_sweeps(name, data["provenance"])
    bounds = data["token_bucket_bounds"]
    if (
        not bounds
        or not all(type(b) is int and b > 0 for b in bounds)
        or bounds != sorted(set(bounds))
    ):
        fail(name, "token_bucket_bounds", f"expected rising positive ints, got {bounds}")
    for index, row in enumerate(data["rows"]):
        where = f"rows[{index}]"
        check_fields(name, where, row, {**row_fields, "provenance": str}, {"notes": str})
        check_provenance(name, where, row["provenance"], ids)
    return data


def read_json(source: Source) -> tuple[str, Any]:
    """The file ``source``'s name and its parsed JSON; raises :class:`LaunchTableError`
    naming the file if it cannot be read or is not JSON."""
    name = str(source)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise LaunchTableError(f"launch table {name}: cannot be read ({exc})") from exc
    try:
        return name, json.loads(text)
    except json.JSONDecodeError as exc:
        raise LaunchTableError(f"launch table {name}: not valid JSON ({exc})") from exc


def check_sweeps(name: str, provenance: Any) -> set[str]:
    """The ids of a file's ``provenance`` (``{"notes", "sweeps"}``), every sweep checked:
    its fields (``SWEEP_FIELDS``), non-empty commands and results, version strings, a
    ``YYYY-MM-DD...`` date, an id no other sweep has."""
    provenance = check_fields(name, "provenance", provenance, {"notes": str, "sweeps": list})
    ids: set[str] = set()
    for index, sweep in enumerate(provenance["sweeps"]):
        where = f"provenance.sweeps[{index}]"
        check_fields(name, where, sweep, SWEEP_FIELDS, SWEEP_OPTIONAL)
        lists = ("sweep", "results")
        if not all(sweep[k] and all(isinstance(s, str) for s in sweep[k]) for k in lists):
            fail(name, where, "sweep and results must be non-empty lists of strings")
        versions = sweep["versions"]
        if not versions or not all(isinstance(v, str) for v in versions.values()):
            fail(name, f"{where}.versions", "expected a non-empty object of version strings")
        if len(sweep["date"]) < 10 or not sweep["date"][:10].replace("-", "").isdigit():
            fail(name, f"{where}.date", f"expected YYYY-MM-DD..., got {sweep['date']!r}")
        if sweep["id"] in ids:
            fail(name, where, f"duplicate sweep id {sweep['id']!r}")
        ids.add(sweep["id"])
    return ids


def check_provenance(name: str, where: str, sweep_id: str, ids: set[str]) -> None:
    if sweep_id not in ids:
        fail(name, f"{where}.provenance", f"names no sweep of the file: {sweep_id!r}")


def sweep_ids(data: dict[str, Any]) -> set[str]:
    """The ids of a checked table's sweeps."""
    return {sweep["id"] for sweep in data["provenance"]["sweeps"]}
