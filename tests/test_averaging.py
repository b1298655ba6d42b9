"""average_params: EMA and Polyak averages of the params, read with averaged_params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj


def _run(avg, n=6, lr=0.1):
    params = {"w": jnp.asarray([1.0, -2.0, 3.0]), "b": jnp.asarray(0.5)}
    tx = aj.chain(aj.sgd(lr, momentum=0.5), avg)
    loss = lambda p: jnp.sum(jnp.sin(p["w"]) * p["w"]) + p["b"] ** 2

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        p = aj.apply_updates(p, u)
        return (p, s), p

    (_, state), history = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=n))(params)
    return params, history, state


def test_ema_matches_the_recurrence():
    params, history, state = _run(aj.average_params(0.8))
    for k in params:
        a = np.asarray(params[k], np.float64)
        for t in range(6):
            a = 0.8 * a + 0.2 * np.asarray(history[k][t], np.float64)
        np.testing.assert_allclose(np.asarray(aj.averaged_params(state)[k]), a, rtol=1e-6)


def test_polyak_is_the_mean_of_the_iterates_and_start_step():
    _, history, state = _run(aj.average_params())
    _, _, late = _run(aj.average_params(start_step=3))
    for k in history:
        h = np.asarray(history[k], np.float64)
        np.testing.assert_allclose(np.asarray(aj.averaged_params(state)[k]), h.mean(0), rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(aj.averaged_params(late)[k]), h[3:].mean(0), rtol=1e-6
        )


def test_updates_pass_unchanged_and_schedule_decay():
    params = {"w": jnp.ones(2)}
    g = {"w": jnp.asarray([0.5, -1.0])}
    t_float = lambda t: t.astype(jnp.float32)
    tx = aj.average_params(lambda t: jnp.minimum(0.99, (1.0 + t_float(t)) / (10.0 + t_float(t))))
    u, state = tx.update(g, tx.init(params), params)
    assert u is g
    d = 1.0 / 10.0
    want = d * np.ones(2) + (1 - d) * (np.ones(2) + np.asarray([0.5, -1.0]))
    np.testing.assert_allclose(np.asarray(aj.averaged_params(state)["w"]), want, rtol=1e-6)
    np.testing.assert_allclose(float(aj.get_hyperparams(state)["decay"]), d, rtol=1e-6)


def test_average_dtype_and_integer_leaves():
    params = {"w": jnp.ones(3, jnp.bfloat16), "n": jnp.asarray(4)}
    tx = aj.average_params(0.5, average_dtype=jnp.float32)
    state = tx.init(params)
    assert state.average["w"].dtype == jnp.float32 and state.average["n"].dtype == jnp.int32
    g = {"w": jnp.ones(3, jnp.bfloat16), "n": np.zeros((), jax.dtypes.float0)}
    _, state = tx.update(g, state, params)
    np.testing.assert_allclose(np.asarray(state.average["w"]), 1.5)
    assert int(state.average["n"]) == 4


def test_averaged_params_errors_and_validation():
    with pytest.raises(ValueError, match="found 0"):
        aj.averaged_params(aj.sgd(0.1).init({"w": jnp.ones(1)}))
    with pytest.raises(ValueError, match="decay"):
        aj.average_params(1.0)
    with pytest.raises(ValueError, match="start_step"):
        aj.average_params(start_step=-1)
    tx = aj.average_params()
    with pytest.raises(ValueError, match="needs the params"):
        tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))
