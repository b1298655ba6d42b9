"""RAdam, NAdamW, Adadelta and Lion beyond conformance: wrappers, devices, flat params,
hyperparameters in state, validation, state dtypes and RAdam's rectification in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from accel_jax.transforms.rectified import rectification

FACTORIES = {
    "radam": lambda lr: aj.radam(lr, weight_decay=0.01, decoupled_weight_decay=True),
    "nadamw": lambda lr: aj.nadamw(lr, weight_decay=0.01, convention="torch"),
    "adadelta": lambda lr: aj.adadelta(lr, weight_decay=0.01, convention="keras"),
    "lion": lambda lr: aj.lion(lr),
}
NAMES = sorted(FACTORIES)
STEPS = 8


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "b": jnp.linspace(0.5, -0.5, 8)}


@jax.jit
def _grads(p, k):
    """A deterministic gradient that depends on the params and the step."""
    return jax.tree.map(lambda x: jnp.sin(3.0 * x + 0.7 * jnp.float32(k)) + 0.1 * x, p)


def _run(tx, params, steps=STEPS, grads=_grads, step=None):
    step = step or jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g))
    state = tx.init(params)
    for k in range(steps):
        params, state = step(params, state, grads(params, k))
    return params, state


def _close(a, b, rtol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7), a, b)


@pytest.mark.parametrize("name", NAMES)
def test_wrappers_and_flat_params_give_the_plain_trajectory(name):
    tx = FACTORIES[name](0.01)
    expected, _ = _run(tx, _params())
    # make_step (donated buffers)
    copy = jax.tree.map(jnp.copy, _params())
    _close(_run(tx, copy, step=aj.make_step(tx))[0], expected)
    # partition: one optimizer per leaf is the same, every formula being per leaf
    labels = {"w": "a", "b": "b"}
    _close(_run(aj.partition({"a": tx, "b": FACTORIES[name](0.01)}, labels), _params())[0],
           expected)
    # skip_non_finite: a NaN step leaves params and state alone
    nan_at = 3
    skip = aj.skip_non_finite(tx)
    poisoned = lambda p, k: (jax.tree.map(lambda g: g * jnp.nan, _grads(p, k)) if k == nan_at
                             else _grads(p, k - (k > nan_at)))
    _close(_run(skip, _params(), STEPS + 1, poisoned)[0], expected)
    # accumulate_gradients: two equal micro-batches make one step
    acc = aj.accumulate_gradients(tx, 2)
    twice = lambda p, k: _grads(p, k // 2)
    _close(_run(acc, _params(), 2 * STEPS, twice)[0], expected)
    # flat params: one buffer, the same values (every formula is per element)
    flat, layout = aj.flatten_params(_params())
    flat_grads = jax.jit(lambda f, k: aj.flatten_params(_grads(layout.unflatten(f), k))[0])
    _close(layout.unflatten(_run(tx, flat, grads=flat_grads)[0]), expected)


@pytest.mark.parametrize("name", NAMES)
def test_pmap_and_sharded_jit_equal_one_device(name):
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    tx = FACTORIES[name](0.01)
    expected, _ = _run(tx, _params())
    n = jax.local_device_count()
    assert n == 8
    rep = lambda t: jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n, *a.shape)), t)
    pstep = jax.pmap(lambda p, s, g: aj.apply_step(tx, p, s, g), axis_name="d")
    p, s = rep(_params()), rep(tx.init(_params()))
    for k in range(STEPS):
        p, s = pstep(p, s, rep(_grads(jax.tree.map(lambda x: x[0], p), k)))
    _close(jax.tree.map(lambda x: x[0], p), expected)
    mesh = Mesh(np.array(jax.devices()), ("model",))
    shard = {"w": NamedSharding(mesh, P("model", None)), "b": NamedSharding(mesh, P("model"))}
    sharded, _ = _run(tx, jax.device_put(_params(), shard))
    assert sharded["w"].sharding.is_equivalent_to(shard["w"], 2)
    _close(sharded, expected)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparams_in_state_and_inject_hyperparams(name):
    schedule = lambda count: 0.01 * 0.5 ** count.astype(jnp.float32)
    tx = FACTORIES[name](schedule)
    params = _params()
    state = tx.init(params)
    for k in range(3):
        _, state = tx.update(_grads(params, k), state, params)
    lr = float(aj.get_hyperparams(state)["learning_rate"])
    np.testing.assert_allclose(lr, 0.01 * 0.5**2, rtol=1e-6)
    # numbers given as arrays (optax.inject_hyperparams) trace without Python branching
    injected = optax.inject_hyperparams(lambda learning_rate: FACTORIES[name](learning_rate))(
        learning_rate=0.01)
    with jax.numpy_dtype_promotion("standard"):
        got, _ = _run(injected, _params())
    _close(got, _run(FACTORIES[name](0.01), _params())[0], rtol=1e-5)


@pytest.mark.parametrize("make, arg, allowed", [
    (lambda: aj.radam(0.1, threshold=3.0), "threshold", "[4"),
    (lambda: aj.radam(0.1, b2=1.0), "b2", "[0, 1)"),
    (lambda: aj.radam(0.1, convention="keras"), "convention", "'optax', 'torch'"),
    (lambda: aj.radam(0.1, decoupled_weight_decay="yes"), "decoupled_weight_decay", "True"),
    (lambda: aj.nadamw(0.1, weight_decay=-1.0), "weight_decay", "[0"),
    (lambda: aj.nadamw(0.1, momentum_decay=-1.0), "momentum_decay", "[0"),
    (lambda: aj.adadelta(1.0, rho=1.0), "rho", "[0, 1)"),
    (lambda: aj.adadelta(1.0, eps=-1e-6), "eps", "[0"),
    (lambda: aj.lion(0.1, b1=1.5), "b1", "[0, 1]"),
    (lambda: aj.lion(0.1, b2=1.0), "b2", "[0, 1)"),
    (lambda: aj.lion(0.1, convention="torch"), "convention", "'optax', 'keras'"),
    (lambda: aj.lion(-0.1), "learning_rate", "[0"),
])
def test_bad_hyperparameters_name_argument_value_and_range(make, arg, allowed):
    with pytest.raises(ValueError, match=arg) as info:
        make()
    assert allowed in str(info.value)


@pytest.mark.parametrize("make, fields", [
    (lambda: aj.radam(0.01, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32), ("mu", "nu")),
    (lambda: aj.nadamw(0.01, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32), ("mu", "nu")),
    (lambda: aj.adadelta(1.0, nu_dtype=jnp.bfloat16), ("e_g", "e_x")),
    (lambda: aj.lion(0.01, mu_dtype=jnp.bfloat16), ("mu",)),
])
def test_state_dtypes_and_bf16_params(make, fields):
    tx = make()
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    state = tx.init(params)
    first = next(s for s in state if hasattr(s, fields[0]))
    for f in fields:
        assert getattr(first, f)["w"].dtype in (jnp.bfloat16, jnp.float32)
    u, state = tx.update({"w": jnp.full((3, 2), 0.5, jnp.bfloat16)}, state, params)
    assert u["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(u["w"].astype(float))))
    assert first.count.dtype == jnp.int32


def test_radam_rectification_in_float32_matches_float64():
    """rho_t and r_t in float32 to ~1e-6 of the float64 formula (as written, float32
    loses up to 4 digits of rho_t to cancellation)."""
    for b2 in (0.9, 0.99, 0.999, 0.9999):
        t = np.arange(1, 3001)
        b = np.float64(np.float32(b2))
        rho_inf = 2 / (1 - b) - 1
        rho = rho_inf - 2 * t * b**t / (1 - b**t)
        ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        got_rho, got_r = jax.vmap(lambda c, b2=b2: rectification(jnp.float32(b2), c))(
            jnp.asarray(t, jnp.int32))
        np.testing.assert_allclose(got_rho, rho, rtol=5e-7, atol=2e-6)
        on = rho >= 5
        np.testing.assert_allclose(np.asarray(got_r)[on], np.sqrt(ratio[on]), rtol=2e-6)


def test_radam_first_steps_are_momentum_sgd_then_rectified():
    tx = aj.radam(0.1)
    params, state = {"w": jnp.zeros(2)}, None
    state = tx.init(params)
    g = {"w": jnp.array([1.0, -2.0])}
    for _ in range(5):  # rho_t < 5: u = -lr * m_hat = -lr * g for a constant g
        u, state = tx.update(g, state, params)
        np.testing.assert_allclose(u["w"], [-0.1, 0.2], rtol=1e-6)
    u, state = tx.update(g, state, params)  # step 6: r_6 * m_hat / sqrt(v_hat)
    _, r6 = rectification(jnp.float32(0.999), jnp.int32(6))
    np.testing.assert_allclose(u["w"], -0.1 * float(r6) * np.array([1.0, -1.0]), rtol=1e-5)
