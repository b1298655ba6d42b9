"""Every docstring example of every accel_jax module runs and gives the output it shows."""

import doctest
import importlib
import pkgutil

import pytest

import accel_jax

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(accel_jax.__path__, prefix="accel_jax.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_public_modules_have_examples():
    finder = doctest.DocTestFinder()
    attempted = {
        name: sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
        for name in MODULES
    }
    # Every optimizer family module, and the modules users read first.
    families = [n for n in MODULES if n.startswith("accel_jax.optimizers.")
                and not n.rsplit(".", 1)[1].startswith("_")]
    missing = [n for n in (*families, "accel_jax.combine", "accel_jax.base",
                           "accel_jax.schedules", "accel_jax.hyperparams") if attempted[n] == 0]
    assert not missing
