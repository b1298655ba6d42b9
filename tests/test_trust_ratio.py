"""scale_by_trust_ratio, LAMB and LARS: optax live, masks, sharding, validation.

Trajectory conformance (optax, Keras) is tests/test_conformance_lamb.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import accel_jax as aj


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "w": jax.random.normal(k[0], (8, 16)),
        "b": jnp.zeros(16),  # a fresh bias: ||w|| = 0
        "s": jax.random.normal(k[1], (16,)),
    }


def _grads(i, params):
    keys = jax.random.split(jax.random.PRNGKey(10 + i), 3)
    g = {n: jax.random.normal(k, p.shape) for k, (n, p) in zip(keys, params.items(), strict=True)}
    g["s"] = jnp.zeros(16)  # a zero update: the ratio falls back to 1
    return g


def _run(tx, params, steps, standard=False):
    state = tx.init(params)
    for i in range(steps):
        if standard:
            with jax.numpy_dtype_promotion("standard"):
                u, state = tx.update(_grads(i, params), state, params)
        else:
            u, state = tx.update(_grads(i, params), state, params)
        params = jax.tree.map(lambda p, d: p + d, params, u)
    return params


@pytest.mark.parametrize(
    "kwargs", [{}, dict(min_norm=0.5, trust_coefficient=0.01, eps=1e-3), dict(min_norm=10.0)]
)
def test_scale_by_trust_ratio_matches_optax(kwargs):
    params = _params()
    grads = {**_grads(0, params), "b": jnp.ones(16)}
    tx = aj.scale_by_trust_ratio(**kwargs)
    ours, _ = tx.update(grads, tx.init(params), params)
    with jax.numpy_dtype_promotion("standard"):
        ref, _ = optax.scale_by_trust_ratio(**kwargs).update(grads, None, params)
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=2e-6, err_msg=k)
    if not kwargs:  # zero params (b) and zero update (s) keep the update: ratio 1
        np.testing.assert_array_equal(ours["b"], grads["b"])


def test_mask_leaves_the_excluded_leaves_alone():
    params = _params()
    grads = _grads(0, params)
    mask = lambda p: {"w": True, "b": False, "s": False}  # noqa: E731
    tx = aj.scale_by_trust_ratio(trust_coefficient=0.1, mask=mask)
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(u["s"], grads["s"])
    ratio = 0.1 * jnp.linalg.norm(params["w"]) / jnp.linalg.norm(grads["w"])
    np.testing.assert_allclose(u["w"], ratio * grads["w"], rtol=1e-6)


NOT_BIAS = lambda p: {k: k != "b" for k in p}  # noqa: E731
OPTAX_PAIRS = {
    "lamb": (lambda: aj.lamb(1e-2), lambda: optax.lamb(1e-2)),
    "lamb_wd_mask": (
        lambda: aj.lamb(1e-2, weight_decay=0.1, mask=NOT_BIAS),
        lambda: optax.lamb(1e-2, weight_decay=0.1, mask=NOT_BIAS),
    ),
    "lars_masks": (
        lambda: aj.lars(1.0, 1e-2, NOT_BIAS, trust_ratio_mask=NOT_BIAS, nesterov=True),
        lambda: optax.lars(1.0, 1e-2, NOT_BIAS, trust_ratio_mask=NOT_BIAS, nesterov=True),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_PAIRS))
def test_masked_variants_match_optax(name):
    ours, ref = OPTAX_PAIRS[name]
    got = _run(ours(), _params(), 5)
    want = _run(ref(), _params(), 5, standard=True)
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["lamb", "lars", "adafactor"])
def test_sharded_params_give_the_single_device_result(name):
    """Trust ratios and block rms are global reductions: 8 devices equal one."""
    tx = {
        "lamb": aj.lamb(1e-2, weight_decay=0.1),
        "lars": aj.lars(1.0, 1e-3, trust_coefficient=0.01),
        "adafactor": aj.adafactor(1e-2, min_dim_size_to_factor=4, convention="torch",
                                  weight_decay_rate=0.1),
    }[name]
    params = _params()
    mesh = Mesh(np.array(jax.devices()), ("model",))
    shard = {"w": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P("model")),
             "s": NamedSharding(mesh, P("model"))}
    step = jax.jit(lambda p, s, g: (lambda u, s: (aj.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    one, many = params, jax.device_put(params, shard)
    s_one, s_many = tx.init(one), tx.init(many)
    for i in range(3):
        g = _grads(i, params)
        one, s_one = step(one, s_one, g)
        many, s_many = step(many, s_many, jax.device_put(g, shard))
    assert many["w"].sharding.is_equivalent_to(shard["w"], 2)
    for k in params:
        np.testing.assert_allclose(many[k], one[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_axis_name_sums_the_norms_across_shard_map():
    params, grads = _params(), _grads(0, _params())
    grads["s"] = jnp.ones(16)
    plain = aj.scale_by_trust_ratio(trust_coefficient=0.5)
    want, _ = plain.update(grads, plain.init(params), params)
    mesh = Mesh(np.array(jax.devices()), ("i",))
    tx = aj.scale_by_trust_ratio(trust_coefficient=0.5, axis_name="i")
    specs = {"w": P(None, "i"), "b": P("i"), "s": P("i")}

    def split(g, p):
        return tx.update(g, tx.init(p), p)[0]

    got = jax.shard_map(split, mesh=mesh, in_specs=(specs, specs), out_specs=specs)(grads, params)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: aj.scale_by_trust_ratio(min_norm=-1.0), "min_norm"),
        (lambda: aj.scale_by_trust_ratio(trust_coefficient=0.0), "trust_coefficient"),
        (lambda: aj.scale_by_trust_ratio(eps=-1e-3), "eps"),
        (lambda: aj.lamb(1e-2, b2=1.0), "b2"),
        (lambda: aj.lamb(-1.0), "learning_rate"),
        (lambda: aj.lamb(1e-2, weight_decay=-0.1), "weight_decay"),
        (lambda: aj.lamb(1e-2, convention="torch"), "convention"),
        (lambda: aj.lars(1.0, momentum=1.5), "momentum"),
        (lambda: aj.lars(1.0, trust_ratio_mask="False"), "trust_ratio_mask"),
        (lambda: aj.lars(1.0, convention="keras"), "convention"),
    ],
)
def test_bad_arguments_are_named(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_hyperparams_report_the_rate_used():
    params = _params()
    tx = aj.lars(lambda count: 0.5 / (jnp.asarray(count, jnp.float32) + 1), momentum=0.8,
                 trust_coefficient=0.02)
    state = tx.init(params)
    for i in range(3):
        _, state = tx.update(_grads(i, params), state, params)
    hp = aj.get_hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(0.5 / 3)
    assert float(hp["momentum"]) == pytest.approx(0.8)
    assert float(hp["trust_coefficient"]) == pytest.approx(0.02)
    # a number set in state is the one used next (no recompilation)
    state = aj.set_hyperparams(aj.lamb(1e-2).init(params), learning_rate=0.0)
    u, _ = aj.lamb(1e-2).update(_grads(0, params), state, params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
