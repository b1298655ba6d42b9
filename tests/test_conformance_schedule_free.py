"""Schedule-free AdamW / SGD against optax (live), ``schedulefree`` and Keras (goldens).

Every cell checks both sequences after each recorded step: the train point ``y``
(the params) and the evaluation point ``x`` (:func:`aj.schedule_free_eval_params`;
optax's ``schedule_free_eval_params``, schedulefree's ``optimizer.eval()``, Keras'
``(y - (1 - b1) momentum) / b1``). Goldens: ``scripts/make_schedulefree_goldens.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import conformance as c

V = c.variant
VARIANTS = [
    # a changing learning rate (lr * 0.98**k) under a 10-step warmup, in all three
    V("schedule_free_adamw", "default", ecosystems=("optax", "schedulefree", "keras"),
      lr=0.02, decay=0.98, warmup_steps=10),
    V("schedule_free_adamw", "weight_decay", ecosystems=("optax", "schedulefree"),
      lr=0.02, b1=0.95, weight_decay=0.05),
    V("schedule_free_adamw", "r", ecosystems=("schedulefree",),  # optax has no ``r``
      lr=0.02, warmup_steps=5, r=1.0, weight_lr_power=1.0),
    V("schedule_free_sgd", "default", ecosystems=("optax", "schedulefree"),
      lr=0.01, decay=0.98, warmup_steps=10),
    V("schedule_free_sgd", "weight_decay", ecosystems=("optax", "schedulefree"),
      lr=0.01, b1=0.95, weight_decay=0.01),
]
c.register(VARIANTS)


def _optax_warmup(lr, warmup_steps):
    """optax's ``warmup_constant_schedule(0, lr, warmup_steps)`` times ``lr``'s schedule.

    Written out because optax's own evaluates in float32 even with x64 on (a 1e-8
    relative difference); tests/test_schedule_free.py::test_optax_own_functions_with_warmup
    covers it at float32 tolerance.
    """
    def schedule(count):
        base = lr(count) if callable(lr) else lr
        frac = jnp.asarray(count, jnp.result_type(float)) / warmup_steps  # int32 / int: float32
        return base * jnp.minimum(frac, 1)

    return schedule


def _optax(v: c.Variant, lr):
    kw = dict(v.kwargs)
    warmup = kw.pop("warmup_steps", None)
    if warmup is None:
        return getattr(optax.contrib, v.optimizer)(lr, **kw)
    # the body of optax.contrib.schedule_free_adamw / _sgd with the warmup above
    lr = _optax_warmup(lr, warmup)
    if v.optimizer == "schedule_free_adamw":
        base = optax.chain(
            optax.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
            optax.add_decayed_weights(kw.pop("weight_decay", 0.0)),
            optax.scale_by_learning_rate(lr),
        )
    else:
        base = optax.sgd(lr)
    return optax.contrib.schedule_free(base, lr, **kw)


c.OPTAX["schedule_free_adamw"] = _optax
c.OPTAX["schedule_free_sgd"] = _optax


@functools.cache
def _optax_eval(variant_id: str, dtype: str) -> dict:
    """optax's eval params after each step of its own trajectory's gradients."""
    ref = c.reference(variant_id, "optax", dtype)
    v = c.BY_ID[variant_id]
    with jax.numpy_dtype_promotion("standard"):
        tx = _optax(v, c.learning_rate(v, dtype))

        @jax.jit
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return p, s, optax.contrib.schedule_free_eval_params(s, p)

        params, state, xs = ref.init, tx.init(ref.init), []
        for k in range(c.STEPS):
            params, state, x = step(params, state, {n: g[k] for n, g in ref.grads.items()})
            xs.append(x)
    return {n: x[ref.steps - 1] for n, x in c.stack(xs).items()}


def _reference_eval(variant_id: str, ecosystem: str, dtype: str) -> dict:
    if ecosystem == "optax":
        return _optax_eval(variant_id, dtype)
    ref = c.reference(variant_id, ecosystem, dtype)
    with np.load(c.golden_file(c.BY_ID[variant_id], ecosystem)) as data:
        return {k: data[f"{dtype}/{k}/eval"] for k in ref.init}


@functools.cache
def _ours(variant_id: str, ecosystem: str, dtype: str) -> tuple[dict, dict]:
    """accel_jax's (train, eval) params after each recorded step of the reference's grads."""
    ref = c.reference(variant_id, ecosystem, dtype)
    tx = c.make(c.BY_ID[variant_id], ecosystem, dtype)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        p = aj.apply_updates(p, u)
        return p, s, aj.schedule_free_eval_params(s, p)

    params, state, ys, xs = ref.init, tx.init(ref.init), [], []
    for k in range(c.STEPS):
        params, state, x = step(params, state, {n: g[k] for n, g in ref.grads.items()})
        ys.append(params)
        xs.append(x)
    pick = lambda t: {n: a[ref.steps - 1] for n, a in c.stack(t).items()}  # noqa: E731
    return pick(ys), pick(xs)


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", c.cells(VARIANTS))
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    if dtype == "float64":
        request.getfixturevalue("x64")
    ref = c.reference(variant_id, ecosystem, dtype)
    assert len(next(iter(ref.grads.values()))) >= c.STEPS
    train, evaluated = _ours(variant_id, ecosystem, dtype)
    label = c.BY_ID[variant_id].call(ecosystem)
    c.assert_close(train, ref, problem, dtype, label + " (train point y)")
    ref_x = c.Trajectory(ref.init, ref.grads, _reference_eval(variant_id, ecosystem, dtype),
                         ref.steps)
    c.assert_close(evaluated, ref_x, problem, dtype, label + " (eval point x)")


GOLDENS = [(v.id, e) for v in VARIANTS for e in v.ecosystems if e != "optax"]


@pytest.mark.parametrize("variant_id, ecosystem", GOLDENS)
def test_goldens_match_the_registry(variant_id, ecosystem):
    meta = c.check_golden_meta(variant_id, ecosystem)
    assert meta["command"] == "python scripts/make_schedulefree_goldens.py"
    with np.load(c.golden_file(c.BY_ID[variant_id], ecosystem)) as data:
        assert all(f"float64/{k}/eval" in data for k in c.init_params())


def test_conventions_differ_where_documented(x64):
    """Each convention switch changes the trajectory of the warmup + decay variant."""
    v = c.BY_ID["schedule_free_adamw_default"]
    ref = c.reference(v.id, "schedulefree", "float64")
    finals = {eco: _ours(v.id, eco, "float64")[0]["mlp/w0"][-1]
              for eco in ("optax", "schedulefree", "keras")}
    assert not np.allclose(finals["optax"], finals["schedulefree"], rtol=1e-6)
    assert not np.allclose(finals["keras"], finals["schedulefree"], rtol=1e-6)
    np.testing.assert_allclose(finals["schedulefree"], ref.params["mlp/w0"][-1], rtol=1e-10)


def test_docs_list_every_cell():
    missing = c.missing_from_docs(VARIANTS)
    assert not missing, f"docs/conformance.md lacks: {missing}"
