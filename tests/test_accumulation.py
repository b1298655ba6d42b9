"""accumulate_gradients: k micro-steps equal one step on the mean gradient; as optax.MultiSteps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import problems


def _mlp():
    prob = problems.small_mlp(n=24)
    params = problems.as_params(prob, problems.MLP_PARAM_NAMES, jnp.float32)
    x, y = jnp.asarray(prob["X"], jnp.float32), jnp.asarray(prob["Y"], jnp.float32)
    return params, x, y


def _train(tx, params, x, y, k, n_calls):
    """``n_calls`` updates, call ``i`` on micro-batch ``i % k`` of the data."""
    xs, ys = x.reshape(k, -1, x.shape[-1]), y.reshape(k, -1, y.shape[-1])

    def body(carry, i):
        p, s = carry
        g = jax.grad(problems.mlp_loss)(p, xs[i % k], ys[i % k])
        u, s = tx.update(g, s, p)
        p = aj.apply_updates(p, u)
        return (p, s), p

    return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(n_calls)))(params)


def test_k_micro_steps_equal_one_step_on_the_mean_gradient():
    params, x, y = _mlp()
    k = 3
    (_, state), history = _train(aj.accumulate_gradients(aj.adam(1e-2), k), params, x, y, k, 2 * k)
    big = aj.adam(1e-2)  # full batch: the mean of equal-size micro-batch gradients
    p, s = params, big.init(params)
    for _ in range(2):
        u, s = big.update(jax.grad(problems.mlp_loss)(p, x, y), s, p)
        p = aj.apply_updates(p, u)
        if _ == 0:
            first = p
    for name in params:
        h = np.asarray(history[name])
        for j in range(k - 1):  # params unchanged on the non-final micro steps
            assert h[j].tobytes() == np.asarray(params[name]).tobytes()
        np.testing.assert_allclose(h[k - 1], np.asarray(first[name]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h[-1], np.asarray(p[name]), rtol=1e-5, atol=1e-6)
    assert int(state.inner_state[0].count) == 2  # inner steps once per k calls
    assert int(state.micro_step) == 0
    assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(state.mean_grads))


def test_matches_optax_multisteps(standard_promotion):
    params, x, y = _mlp()
    k = 4
    (_, ours_state), ours = _train(
        aj.accumulate_gradients(optax.adam(1e-2), k), params, x, y, k, 3 * k + 2
    )
    (_, ref_state), ref = _train(optax.MultiSteps(optax.adam(1e-2), k), params, x, y, k, 3 * k + 2)
    for name in params:
        np.testing.assert_allclose(
            np.asarray(ours[name]), np.asarray(ref[name]), rtol=1e-6, atol=1e-7
        )
    assert int(ours_state.micro_step) == int(ref_state.mini_step) == 2
    for a, b in zip(
        jax.tree.leaves(ours_state.mean_grads), jax.tree.leaves(ref_state.acc_grads), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


def test_memory_is_one_tree_and_acc_dtype():
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "n": jnp.asarray(0)}
    tx = aj.accumulate_gradients(aj.sgd(1.0), 5, acc_dtype=jnp.float32)
    state = tx.init(params)
    assert jax.tree.structure(state.mean_grads) == jax.tree.structure(params)
    assert state.mean_grads["w"].dtype == jnp.float32 and state.mean_grads["w"].shape == (4, 3)
    g = {"w": jnp.full((4, 3), 1.0 / 3, jnp.bfloat16), "n": np.zeros((), jax.dtypes.float0)}
    for _ in range(5):
        u, state = tx.update(g, state, params)
    assert u["w"].dtype == jnp.bfloat16 and u["n"].dtype == jax.dtypes.float0
    np.testing.assert_allclose(np.asarray(u["w"], np.float32), -1.0 / 3, rtol=1e-2)


def test_composes_with_skip_non_finite():
    params = {"w": jnp.zeros(2)}
    tx = aj.skip_non_finite(aj.accumulate_gradients(aj.sgd(1.0), 2))
    state = tx.init(params)
    for g in ([1.0, 1.0], [jnp.nan, 1.0], [3.0, 3.0]):
        u, state = tx.update({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), [-2.0, -2.0])  # the NaN micro-batch is dropped
    assert int(state.total_non_finite) == 1


def test_validation():
    with pytest.raises(ValueError, match="every_k"):
        aj.accumulate_gradients(aj.sgd(0.1), 0)
    with pytest.raises(ValueError, match="every_k"):
        aj.accumulate_gradients(aj.sgd(0.1), 2.5)
    tx = aj.accumulate_gradients(aj.sgd(0.1), 2)
    with pytest.raises(ValueError, match="path"):
        tx.update({"v": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))


def test_resuming_into_a_smaller_every_k_keeps_training():
    """A state saved with every_k=4 after 3 micro-steps, resumed with every_k=2, steps at once.

    The emit test was ``micro_step == every_k - 1``: micro_step 3 never equals 1 again,
    so training stood still for good. optax.MultiSteps steps (``>=``); so does this.
    """
    params = {"w": jnp.zeros(2)}
    old = aj.accumulate_gradients(aj.sgd(1.0), every_k=4)
    state = old.init(params)
    for g in (1.0, 2.0, 3.0):
        _, state = old.update({"w": jnp.full(2, g)}, state, params)
    assert int(state.micro_step) == 3
    new = aj.accumulate_gradients(aj.sgd(1.0), every_k=2)
    updates, state = new.update({"w": jnp.full(2, 6.0)}, state, params)
    np.testing.assert_allclose(updates["w"], -3.0)  # the mean of the four gradients
    assert int(state.micro_step) == 0
    updates, state = new.update({"w": jnp.ones(2)}, state, params)
    updates, state = new.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(updates["w"], -1.0)  # then every 2 micro-steps


@pytest.mark.skipif(not aj.native_available(), reason="native kernels not built")
def test_the_native_kernel_stays_in_use_inside_accumulate_gradients():
    tx = aj.accumulate_gradients(aj.adam(1e-2), every_k=2)
    params = {"w": jnp.ones((4, 3))}
    with_kernel = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    xla = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    state = tx.init(params)
    assert "accel_jax_adam_f32" in with_kernel.lower(params, state, params).as_text()
    a, sa, b, sb = params, state, params, state
    for i in range(4):
        g = {"w": jnp.cos(params["w"] + i)}
        a, sa = with_kernel(a, sa, g)
        b, sb = xla(b, sb, g)
    for x, y in zip(jax.tree.leaves((a, sa)), jax.tree.leaves((b, sb)), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)  # float32 rounding (FMAs)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(y)) or 1.0))
