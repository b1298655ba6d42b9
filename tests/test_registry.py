"""Rules every public transformation keeps, checked over the whole registry (tests/registry.py).

* the recommended step, ``aj.make_step(tx)`` (donating), and a donating ``jax.jit``
  of ``tx.update`` run; ``init`` returns distinct buffers, none of them a param;
* every hyperparameter kept in state has a rule, and ``set_hyperparams`` accepts
  and refuses exactly the values the constructor accepts and refuses;
* strings and bools are not numbers, flags are bools, a wrapper's inner must be a
  transformation;
* Python-float params and gradients work like 0-d arrays.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax import _validation
from tests.registry import FACTORIES, KNOWN_GAPS, NOT_IN_REGISTRY, grads_for, small_params

NAMES = sorted(FACTORIES)


def _returns_transformation(obj) -> bool:
    try:
        annotation = inspect.signature(obj).return_annotation
    except (TypeError, ValueError):
        return False
    return "GradientTransformation" in str(annotation)


def test_every_public_transformation_is_in_the_registry():
    public = {n for n in aj.__all__ if callable(getattr(aj, n)) and
              _returns_transformation(getattr(aj, n))}
    covered = {entry.fn.__name__ for entry in FACTORIES.values()} | {
        name.split("[")[0] for name in FACTORIES
    }
    missing = sorted(public - covered - NOT_IN_REGISTRY)
    assert not missing, f"add these public transformations to tests/registry.py: {missing}"


def _pointers(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]


@pytest.mark.parametrize("name", NAMES)
def test_init_returns_distinct_buffers(name):
    params = small_params()
    state = FACTORIES[name].build().init(params)
    pointers = _pointers(state)
    assert len(set(pointers)) == len(pointers), "one buffer under two state fields"
    assert not set(pointers) & set(_pointers(params)), "a param array is stored in the state"


# Also run under a user's donating jit of tx.update (one more compile each): the wrappers and
# the transformations whose init once aliased buffers.
DONATING_JIT_TOO = ("skip_non_finite", "accumulate_gradients", "schedule_free", "chain[",
                    "reduce_on_plateau", "average_params", "masked", "partition")


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_make_step_and_a_donating_jit(name):
    tx = FACTORIES[name].build()
    params = small_params()
    step = aj.make_step(tx)
    state = tx.init(params)
    for i in range(2):
        params, state = step(params, state, grads_for(params, i), value=jnp.float32(1.0 - i))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    if not name.startswith(DONATING_JIT_TOO):
        return  # make_step is itself a donating jit; test_init_returns_distinct_buffers covers init

    def update(grads, state, params):
        kwargs = {"value": jnp.float32(1.0)} if isinstance(
            tx, aj.GradientTransformationExtraArgs) else {}
        return tx.update(grads, state, params, **kwargs)

    donating = jax.jit(update, donate_argnums=(0, 1))
    params = small_params()
    state = tx.init(params)
    for i in range(2):
        updates, state = donating(grads_for(params, i), state, params)
        params = aj.apply_updates(params, updates)


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_in_state_has_a_rule(name):
    state = FACTORIES[name].build().init(small_params())
    names = {k.rsplit("/", 1)[-1].split("[", 1)[0] for k in aj.get_hyperparams(state)}
    missing = sorted(names - set(_validation.HYPERPARAM_RULES))
    assert not missing, f"add the rule of {missing} to accel_jax._validation.HYPERPARAM_RULES"


PROBES = [-0.5, 0.0, 0.5, 1.0, 1 - 1e-9, 2.0, float("nan"), 1e39, "0.5", True]


def _accepts(fn) -> bool:
    try:
        fn()
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_set_hyperparams_validates_as_the_constructor_does(name):
    entry = FACTORIES[name]
    state = entry.build().init(small_params())
    hp_names = {k.rsplit("/", 1)[-1] for k in aj.get_hyperparams(state)}
    try:
        arguments = set(inspect.signature(entry.fn).parameters)
    except (TypeError, ValueError):
        arguments = set()
    checked = sorted(hp_names & arguments)
    for hp in checked:
        for probe in PROBES:
            ctor = _accepts(lambda hp=hp, probe=probe: entry.build(**{hp: probe}))
            setter = _accepts(lambda hp=hp, probe=probe: aj.set_hyperparams(state, **{hp: probe}))
            assert ctor == setter, (hp, probe, "constructor accepts" if ctor else "setter accepts")


def _flag_arguments(fn):
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], []
    flags = [p.name for p in parameters if isinstance(p.default, bool)]
    numbers = [p.name for p in parameters
               if isinstance(p.default, float) and not isinstance(p.default, bool)]
    return flags, numbers


@pytest.mark.parametrize("name", NAMES)
def test_flags_must_be_bools_and_numbers_must_be_numbers(name):
    if ("flags", name) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS["flags", name])
    entry = FACTORIES[name]
    flags, numbers = _flag_arguments(entry.fn)
    for flag in flags:
        with pytest.raises(ValueError, match=flag):
            entry.build(**{flag: "False"})
    for number in [*numbers, *(k for k, x in entry.kwargs.items()
                               if isinstance(x, float) and not isinstance(x, bool))]:
        for bad in ("1e-3", True):
            with pytest.raises(ValueError, match=number):
                entry.build(**{number: bad})


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith("[adam]")])
def test_a_wrapper_names_an_inner_that_is_not_a_transformation(name):
    if ("inner", name) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS["inner", name])
    entry = FACTORIES[name]
    key = next(k for k, x in entry.kwargs.items() if isinstance(x, aj.GradientTransformation))
    with pytest.raises((ValueError, TypeError), match=key):
        entry.build(**{key: "adam"})


@pytest.mark.parametrize("name", NAMES)
def test_python_float_leaves_work_like_0d_arrays(name):
    if ("python_float", name) in KNOWN_GAPS:
        pytest.skip(KNOWN_GAPS["python_float", name])
    tx = FACTORIES[name].build()
    if name.startswith(("freeze", "masked", "partition", "max_norm", "prune")):
        pytest.skip("needs the two-leaf params tree of the registry")
    extra = {"value": 1.0} if isinstance(tx, aj.GradientTransformationExtraArgs) else {}
    try:
        want, _ = tx.update(jnp.asarray(0.25), tx.init(jnp.asarray(0.5)), jnp.asarray(0.5),
                            **extra)
    except ValueError:
        pytest.skip("scalar params are not supported by this transformation")
    got, _ = tx.update(0.25, tx.init(0.5), 0.5, **extra)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
