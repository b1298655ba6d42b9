"""The source distribution: the license declared as setuptools keeps accepting it, no tests.

The test suite needs the repository (examples/, benchmarks/, scripts/, docs/ and
tests/reference/), so the sdist ships the package and none of the tests
(MANIFEST.in), rather than setuptools' default of tests/test*.py without the
helpers they import.
"""

import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_sdist_has_the_license_and_the_kernels_and_no_tests(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the build backend (pyproject.toml)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "reference", "*.npz")
    for name in ("accel_jax", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    build = "from setuptools import build_meta; print(build_meta.build_sdist('../dist'))"
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=src, capture_output=True, text=True, check=True
    )
    assert "Deprecat" not in done.stdout + done.stderr  # e.g. the license as a TOML table
    with tarfile.open(tmp_path / "dist" / done.stdout.split()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        info = sdist.extractfile(f"{sdist.getnames()[0].split('/')[0]}/PKG-INFO").read().decode()
    assert {"LICENSE", "accel_jax/kernels/cpu_kernels.cc", "accel_jax/_native.py"} <= names
    assert not [name for name in names if name.startswith("tests")], sorted(names)
    assert "License-Expression: Apache-2.0" in info and "License-File: LICENSE" in info
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
