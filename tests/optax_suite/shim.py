"""The optax shim: optax's module names, with accel_jax's equivalents substituted.

``module("optax._src.alias")`` returns a stand-in for that optax module. Reading a
name from it returns:

- accel_jax's object, when ``docs/name_map.md`` documents ``aj.<name>`` as the
  equivalent of ``optax.<name>`` (see :func:`equivalents`);
- optax's own object, for private names, protocol types and test infrastructure
  (``base``'s types, ``test_utils``, ``numerics``, ``utils``, ``optax.tree``,
  losses), which are not optimizer features;
- otherwise optax's object, flagged: a public optimizer, transformation,
  schedule or wrapper that accel_jax does not document as equivalent. A test
  that uses one while it runs is *not applicable* (it is skipped with a reason
  starting ``N/A:``); a function referenced at import time (a parametrization)
  is wrapped so that calling it inside a test does the same.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import types
from pathlib import Path
from typing import Any

NOT_APPLICABLE = "N/A: needs optax."
REPO = Path(__file__).resolve().parents[2]
NAME_MAP = REPO / "docs" / "name_map.md"

# Modules whose names are never substituted nor flagged (test infrastructure, utilities
# that work on any transformation, protocol types).
INFRA_MODULES = (
    "optax._src.test_utils",
    "optax._src.numerics",
    "optax._src.utils",
    "optax._src.base",
    "optax.tree",
    "optax.tree_utils",
    "optax.losses",
    "optax._src.alias_test",
)

_running = {"test": None}  # set by the harness plugin while a test body runs
_used: dict[str, set[str]] = {}  # nodeid -> accel_jax names used


def set_running(nodeid: str | None) -> None:
    _running["test"] = nodeid
    if nodeid is not None:
        _used.setdefault(nodeid, set())


def used_names() -> dict[str, set[str]]:
    return _used


_SPAN = re.compile(r"`([^`]*)`")
_CALL = re.compile(r"^(aj|optax)\.([\w.]+?)(\(.*\))?$")


def _parse_cell(cell: str) -> tuple[str, str, str] | None:
    """``(package, dotted name, argument text)`` for a cell holding exactly one name."""
    spans = _SPAN.findall(cell)
    if len(spans) != 1:
        return None
    m = _CALL.match(spans[0].strip())
    return (m.group(1), m.group(2), m.group(3) or "") if m else None


def parse_name_map(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(equivalent, different)`` from the name map's markdown tables.

    ``equivalent`` maps an optax name (last component) to an accel_jax name. Two
    kinds of rows count:

    - in the "optax drop-in" tables (header ``| optax | accel_jax | status |``),
      status ``equivalent`` rows; rows of any other status (``different``, ...) go
      to ``different`` with their reason and are never substituted;
    - in any other table with an ``accel_jax`` and an ``optax`` column, a row whose
      two cells each hold one name, with the same last name component and the
      same argument text (``aj.lion(lr)`` / ``optax.lion(lr)``).
    """
    equivalent: dict[str, str] = {}
    different: dict[str, str] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if header[:3] == ["optax", "accel_jax", "status"]:
            o, a = _parse_cell(cells[0]), _parse_cell(cells[1])
            if o is None:
                continue
            key = o[1].rsplit(".", 1)[-1]
            status = cells[2].lower()
            if status.startswith("equivalent") and a is not None and a[0] == "aj":
                equivalent[key] = a[1]
            else:
                different[key] = cells[2]
        elif "accel_jax" in header and "optax" in header:
            a = _parse_cell(cells[header.index("accel_jax")])
            o = _parse_cell(cells[header.index("optax")])
            if a and o and a[0] == "aj" and o[0] == "optax":
                key = o[1].rsplit(".", 1)[-1]
                if key == a[1] and o[2] == a[2] and key not in different:
                    equivalent.setdefault(key, a[1])
    for key in different:
        equivalent.pop(key, None)
    return equivalent, different


@functools.cache
def equivalents() -> dict[str, str]:
    """optax name -> accel_jax name, from ``docs/name_map.md`` (or ``$OPTAX_SUITE_NAME_MAP``)."""
    path = Path(os.environ.get("OPTAX_SUITE_NAME_MAP", NAME_MAP))
    equivalent, _ = parse_name_map(path.read_text())
    import accel_jax

    return {k: v for k, v in equivalent.items() if hasattr(accel_jax, v)}


def _aj(name: str) -> Any:
    import accel_jax

    return getattr(accel_jax, name)


def _not_applicable(name: str) -> None:
    import pytest

    pytest.skip(NOT_APPLICABLE + name)


def _flagged_function(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _running["test"] is not None:
            _not_applicable(name)
        return fn(*args, **kwargs)

    return wrapper


def is_infra(module_name: str) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in INFRA_MODULES)


class ShimModule(types.ModuleType):
    """Stands in for one optax module (see the module docstring)."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__, real.__doc__)
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        real = object.__getattribute__(self, "_real")
        table = equivalents()
        if name in table and not name.startswith("_"):
            if _running["test"] is not None:
                _used[_running["test"]].add(table[name])
            return _aj(table[name])
        value = getattr(real, name)
        if isinstance(value, types.ModuleType):
            return module(value.__name__)
        if name.startswith("_") or not callable(value):
            return value
        home = getattr(value, "__module__", "") or ""
        if not home.startswith("optax") or is_infra(home) or is_infra(real.__name__):
            return value
        if isinstance(value, type):
            if _running["test"] is not None:
                _not_applicable(name)
            return value
        return _flagged_function(name, value)


@functools.cache
def module(name: str) -> types.ModuleType:
    """The shim for optax module ``name`` (the real module for infrastructure)."""
    real = importlib.import_module(name)
    return real if is_infra(name) else ShimModule(real)


def known_failures() -> dict[str, str]:
    """optax test id (prefix) -> reason, from the name map's "Known failures" table."""
    path = Path(os.environ.get("OPTAX_SUITE_NAME_MAP", NAME_MAP))
    known, inside = {}, False
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            inside = "known failures" in line.lower()
            continue
        spans = _SPAN.findall(line.split("|")[1]) if inside and line.startswith("|") else []
        if spans:
            known[spans[0]] = line.strip().strip("|").split("|", 1)[1].strip()
    return known
