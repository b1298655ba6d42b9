"""skip_non_finite: a NaN/Inf step leaves params and inner state bit-identical; optax agrees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import problems


def _same_bits(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _mlp():
    prob = problems.small_mlp()
    params = problems.as_params(prob, problems.MLP_PARAM_NAMES, jnp.float32)
    x, y = jnp.asarray(prob["X"], jnp.float32), jnp.asarray(prob["Y"], jnp.float32)
    return params, x, y


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_step_is_skipped_bit_identically(bad):
    params, x, y = _mlp()
    tx = aj.skip_non_finite(aj.adamw(1e-2, weight_decay=1e-2))
    state = tx.init(params)
    step = jax.jit(tx.update)
    grads = jax.grad(problems.mlp_loss)(params, x, y)
    u, state = step(grads, state, params)  # one good step so the moments are non-trivial
    params = aj.apply_updates(params, u)
    bad_grads = dict(grads, w1=grads["w1"].at[2, 1].set(bad))
    u, new_state = step(bad_grads, state, params)
    _same_bits(new_state.inner_state, state.inner_state)
    _same_bits(aj.apply_updates(params, u), params)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(u))
    assert int(new_state.total_non_finite) == 1 and int(new_state.consecutive_non_finite) == 1
    u, newer = step(grads, new_state, params)  # a finite step resets the run, not the total
    assert int(newer.total_non_finite) == 1 and int(newer.consecutive_non_finite) == 0
    assert int(newer.inner_state[0].count) == 2


def _trajectory(tx, params, x, y, bad_steps, n=20):
    def body(carry, t):
        p, s = carry
        g = jax.grad(problems.mlp_loss)(p, x, y)
        g = jax.tree.map(lambda v: jnp.where(jnp.isin(t, bad_steps), jnp.nan, v), g)
        u, s = tx.update(g, s, p)
        p = aj.apply_updates(p, u)
        return (p, s), p

    return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(n)))(params)


@pytest.mark.parametrize("limit", [None, 2])
def test_matches_optax_apply_if_finite(limit, standard_promotion):
    # The same inner optimizer (optax's adam) in both wrappers: only the guards differ.
    params, x, y = _mlp()
    bad = jnp.asarray([3, 7, 8, 12, 13, 14, 15])
    ours_tx = aj.skip_non_finite(optax.adam(1e-2), max_consecutive_skips=limit)
    ref_tx = optax.apply_if_finite(optax.adam(1e-2), 10**9 if limit is None else limit)
    (_, s_ours), p_ours = _trajectory(ours_tx, params, x, y, bad)
    (_, s_ref), p_ref = _trajectory(ref_tx, params, x, y, bad)
    for k in params:
        a, b = np.asarray(p_ours[k]), np.asarray(p_ref[k])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert int(s_ours.total_non_finite) == int(s_ref.total_notfinite)
    # with a limit the NaN passed through poisons the params, so later steps are NaN too
    assert int(s_ours.total_non_finite) == (7 if limit is None else 11)
    assert int(s_ours.consecutive_non_finite) == int(s_ref.notfinite_count)
    w0 = np.asarray(p_ours["w0"])
    if limit is None:
        assert np.all(np.isfinite(w0))
        for t in (3, 7, 8, 12, 13, 14, 15):  # skipped steps: params bit-identical
            assert w0[t].tobytes() == w0[t - 1].tobytes()
    else:  # the third NaN step in a row goes through: the failure shows
        assert np.all(np.isnan(w0[-1])) and np.all(np.isfinite(w0[13]))


def test_adam_trajectory_with_skips_equals_trajectory_without_bad_steps():
    params, x, y = _mlp()
    bad = jnp.asarray([2, 5])
    (_, state), with_skips = _trajectory(aj.skip_non_finite(aj.adam(1e-2)), params, x, y, bad, n=8)
    (_, _), clean = _trajectory(
        aj.skip_non_finite(aj.adam(1e-2)), params, x, y, jnp.asarray([-1]), n=6
    )
    kept = [0, 1, 3, 4, 6, 7]
    np.testing.assert_allclose(
        np.asarray(with_skips["w0"])[kept], np.asarray(clean["w0"]), rtol=1e-6, atol=1e-7
    )
    assert int(state.inner_state[0].count) == 6


def test_extra_args_integer_leaves_and_vmap():
    params = {"w": jnp.ones(3), "n": jnp.asarray(1)}
    grads = {"w": jnp.asarray([1.0, jnp.nan, 0.0]), "n": np.zeros((), jax.dtypes.float0)}
    tx = aj.skip_non_finite(aj.sgd(0.1))
    u, s = tx.update(grads, tx.init(params), params)
    assert u["n"].dtype == jax.dtypes.float0 and int(s.total_non_finite) == 1
    # per-example (vmapped) skipping: each row decides for itself
    batch = {"w": jnp.asarray([[1.0, 1.0], [jnp.nan, 1.0]])}
    p = {"w": jnp.zeros(2)}
    u, s = jax.vmap(lambda g: tx.update(g, tx.init(p), p))(batch)
    np.testing.assert_allclose(np.asarray(u["w"]), [[-0.1, -0.1], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(s.total_non_finite), [0, 1])


def test_validation():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        aj.skip_non_finite(aj.sgd(0.1), max_consecutive_skips=-1)
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        aj.skip_non_finite(aj.sgd(0.1), max_consecutive_skips=1.5)


def test_a_skipped_step_keeps_negative_zero_on_every_path():
    """Skipping selects the old params: -0.0 stays -0.0 (adding a +0.0 update would flip it)."""
    tx = aj.skip_non_finite(aj.sgd(0.1, momentum=0.9))
    params = {"w": jnp.array([-0.0, 1.0])}
    bad = {"w": jnp.array([jnp.nan, 1.0])}
    updates, _ = tx.update(bad, tx.init(params), params)
    stepped = aj.apply_updates(params, updates)
    assert np.signbit(np.asarray(stepped["w"]))[0]
    for kernel in (False, None):
        step = aj.make_step(tx, kernel=kernel)
        p = {"w": jnp.array([-0.0, 1.0])}
        p, state = step(p, tx.init(p), bad)
        assert np.signbit(np.asarray(p["w"]))[0] and int(state.total_non_finite) == 1


@pytest.mark.skipif(not aj.native_available(), reason="native kernels not built")
@pytest.mark.parametrize("inner, kernel", [
    (lambda: aj.adam(1e-2), "accel_jax_adam_f32"),
    (lambda: aj.sgd(1e-2, momentum=0.9), "accel_jax_momentum_f32"),
])
def test_the_native_kernel_stays_in_use_inside_skip_non_finite(inner, kernel):
    tx = aj.skip_non_finite(inner())
    params = problems.layer_like_params()
    with_kernel = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    xla = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    state = tx.init(params)
    assert kernel in with_kernel.lower(params, state, params).as_text()
    a, sa, b, sb = params, state, params, state
    for i in range(4):
        g = jax.tree.map(lambda x, i=i: jnp.cos(x + i), params)
        if i == 2:  # a non-finite step: skipped on both paths
            g = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), g)
        a, sa = with_kernel(a, sa, g)
        b, sb = xla(b, sb, g)
    for x, y in zip(jax.tree.leaves((a, sa)), jax.tree.leaves((b, sb)), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)  # float32 rounding (FMAs)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(y)) or 1.0))
    assert int(sa.total_non_finite) == 1
