"""The documentation keeps up with the code.

* every public name (``accel_jax.__all__``) is documented: its own docstring, a
  ``#:`` comment above a module-level constant, or the hand-written text of the
  re-exported optax protocol types in ``scripts/gen_api_docs.py``;
* ``docs/api.md`` is what ``scripts/gen_api_docs.py`` generates from them now;
* every accel_jax name in ``docs/name_map.md`` exists.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import types

import accel_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator():
    path = ROOT / "scripts" / "gen_api_docs.py"
    spec = importlib.util.spec_from_file_location("gen_api_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public():
    return [
        n for n in accel_jax.__all__ if not isinstance(getattr(accel_jax, n), types.ModuleType)
    ]


def test_every_public_name_is_documented():
    gen = _generator()
    missing = [n for n in _public() if not gen.describe(n, getattr(accel_jax, n))[1].strip()]
    assert not missing, (
        f"public names without documentation: {missing}. Give each a docstring "
        "(a module-level constant: a '#: ...' comment on the line above it)."
    )


def test_api_reference_is_up_to_date():
    expected = _generator().generate()
    current = (ROOT / "docs" / "api.md").read_text()
    assert current == expected, "docs/api.md is out of date: run python scripts/gen_api_docs.py"


def test_api_reference_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    headings = set(re.findall(r"^### `(\w+)`$", text, flags=re.M))
    assert headings == set(_public())


def test_name_map_names_exist():
    text = (ROOT / "docs" / "name_map.md").read_text()
    first_cells = [
        line.split("|")[1] for line in text.splitlines() if line.startswith("| `aj.")
    ]
    names = {m for cell in first_cells for m in re.findall(r"aj\.(\w+)", cell)}
    assert len(names) > 30
    unknown = sorted(n for n in names if n not in accel_jax.__all__)
    assert not unknown, f"docs/name_map.md names what accel_jax does not export: {unknown}"
