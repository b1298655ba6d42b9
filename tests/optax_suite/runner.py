"""Runs optax's own test files against accel_jax and reports per file.

    python -m tests.optax_suite.runner [--json out.json] [--files f1 f2 ...]

Each selected test file of the installed optax is copied with only its optax
import lines rewritten to go through :mod:`tests.optax_suite.shim`, then all run
in one pytest subprocess. Per file: passed / failed / not applicable (the test
used an optax name accel_jax does not document as equivalent) / skipped (by
optax's own test). The figure is passed / (passed + failed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.optax_suite import shim

# The files the issue names (relative to optax's package folder).
FILES = (
    "_src/alias_test.py",
    "_src/transform_test.py",
    "_src/combine_test.py",
    "_src/update_test.py",
    "_src/float64_test.py",
    "transforms/_accumulation_test.py",
    "transforms/_adding_test.py",
    "transforms/_clipping_test.py",
    "transforms/_combining_test.py",
    "transforms/_conditionality_test.py",
    "transforms/_constraining_test.py",
    "transforms/_freezing_test.py",
    "transforms/_layouts_test.py",
    "transforms/_masking_test.py",
    "transforms/_monitoring_test.py",
    "schedules/_inject_test.py",
    "schedules/_join_test.py",
    "schedules/_schedule_test.py",
    "contrib/_reduce_on_plateau_test.py",
    "_src/lookahead_test.py",
)

_SHIM = "from tests.optax_suite import shim as _optax_shim; "
_FROM = re.compile(r"^(\s*)from (optax(?:\.[\w.]+)?) import (\w+)(?: as (\w+))?\s*$")
_IMPORT = re.compile(r"^(\s*)import (optax(?:\.[\w.]+)?)(?: as (\w+))?\s*$")


def optax_dir() -> Path:
    return Path(importlib.util.find_spec("optax").origin).parent


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def rewrite(source: str) -> str:
    """``source`` with every optax import line routed through the shim (one line each)."""
    out = []
    for line in source.splitlines():
        m = _FROM.match(line)
        if m:
            indent, package, name, alias = m.groups()
            full = f"{package}.{name}"
            if _is_module(full):
                line = f'{indent}{_SHIM}{alias or name} = _optax_shim.module("{full}")'
            else:
                line = (
                    f"{indent}{_SHIM}{alias or name} = "
                    f'getattr(_optax_shim.module("{package}"), "{name}")'
                )
        else:
            m = _IMPORT.match(line)
            if m:
                indent, full, alias = m.groups()
                bound = alias or "optax"
                target = full if alias else "optax"
                line = f'{indent}import {full}; {_SHIM}{bound} = _optax_shim.module("{target}")'
        out.append(line)
    return "\n".join(out) + "\n"


_PLUGIN = '''
import json, os
import pytest
from tests.optax_suite import shim

_results = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    shim.set_running(item.nodeid)
    try:
        return (yield)
    finally:
        shim.set_running(None)


def pytest_runtest_logreport(report):
    rec = _results.setdefault(report.nodeid, {"outcome": "passed", "reason": ""})
    if report.failed:
        rec["outcome"] = "failed"
        text = str(report.longrepr).strip().splitlines()
        errors = [t for t in text if t.startswith("E ")]
        rec["reason"] = (errors[-1] if errors else (text[-1] if text else ""))[:300]
    elif report.skipped and rec["outcome"] != "failed":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        rec["outcome"] = "n/a" if reason.startswith(shim.NOT_APPLICABLE) else "skipped"
        rec["reason"] = reason[:300]


def pytest_collectreport(report):
    if report.failed:
        _results[report.nodeid + "::<collection>"] = {
            "outcome": "failed", "reason": str(report.longrepr).strip().splitlines()[-1][:300]}


def pytest_sessionfinish(session):
    used = {k: sorted(v) for k, v in shim.used_names().items()}
    for nodeid, rec in _results.items():
        rec["accel_jax"] = used.get(nodeid, [])
    with open(os.environ["OPTAX_SUITE_RESULTS"], "w") as f:
        json.dump(_results, f, indent=1)
'''


def prepare(folder: Path, files=FILES, transform=rewrite) -> list[str]:
    """Writes the rewritten test files and the recording plugin into ``folder``."""
    source_dir = optax_dir()
    written = []
    for rel in files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(transform((source_dir / rel).read_text()))
        written.append(rel)
    (folder / "conftest.py").write_text(_PLUGIN)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return written


def run(files=FILES, transform=rewrite, timeout: float = 900, extra_env=None) -> dict:
    """Runs the files in one pytest subprocess; returns ``{nodeid: record}``."""
    with tempfile.TemporaryDirectory(prefix="optax_suite_") as tmp:
        folder = Path(tmp)
        written = prepare(folder, files, transform)
        results = folder / "results.json"
        env = dict(os.environ)
        env.update(
            OPTAX_SUITE_RESULTS=str(results),
            PYTHONPATH=os.pathsep.join([str(shim.REPO), env.get("PYTHONPATH", "")]),
            JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"),
        )
        env.pop("XLA_FLAGS", None)
        env.update(extra_env or {})
        cmd = [sys.executable, "-m", "pytest", "-q", "--import-mode=importlib",
               "-c", str(folder / "pytest.ini"), "--rootdir", str(folder),
               "-W", "ignore", *written]
        subprocess.run(cmd, cwd=folder, env=env, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return json.loads(results.read_text()) if results.exists() else {}


def per_file(results: dict) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for nodeid, rec in results.items():
        row = table.setdefault(nodeid.split("::")[0],
                               {"passed": 0, "failed": 0, "n/a": 0, "skipped": 0})
        row[rec["outcome"]] += 1
    return dict(sorted(table.items()))


def figure(results: dict) -> tuple[int, int]:
    rows = per_file(results).values()
    passed = sum(r["passed"] for r in rows)
    return passed, passed + sum(r["failed"] for r in rows)


def format_table(results: dict) -> str:
    lines = [f"{'file':42} {'passed':>6} {'failed':>6} {'n/a':>6} {'skipped':>7}"]
    for name, r in per_file(results).items():
        lines.append(f"{name:42} {r['passed']:6} {r['failed']:6} {r['n/a']:6} {r['skipped']:7}")
    passed, applicable = figure(results)
    pct = 100.0 * passed / max(applicable, 1)
    lines.append(f"optax suite against accel_jax: {passed}/{applicable} applicable tests pass "
                 f"({pct:.1f}%)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the per-test records here")
    parser.add_argument("--files", nargs="*", default=list(FILES))
    parser.add_argument("--failures", action="store_true", help="list the failing tests")
    args = parser.parse_args(argv)
    results = run(args.files)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(format_table(results))
    if args.failures:
        for nodeid, rec in results.items():
            if rec["outcome"] == "failed":
                print(f"FAILED {nodeid}: {rec['reason']}")


if __name__ == "__main__":
    main()
