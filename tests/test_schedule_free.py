"""Schedule-free AdamW / SGD: optax's own functions, the wrapper, eval params, state,
validation, and the library's wrappers. Step-by-step conformance with optax,
schedulefree and Keras: tests/test_conformance_schedule_free.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import problems

Q = problems.rotated_quadratic()


def _loss(p):
    a, b = jnp.asarray(Q["A"], p["x"].dtype), jnp.asarray(Q["b"], p["x"].dtype)
    return problems.quadratic_loss(p, a, b)


def _run(tx, steps=30, params=None, apply=aj.apply_updates, eval_fn=aj.schedule_free_eval_params):
    """Closed loop on the quadratic: the final train params and eval params."""
    params = params if params is not None else {"x": jnp.asarray(Q["x0"], jnp.float32)}

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(_loss)(p), s, p)
        return apply(p, u), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, eval_fn(state, params), state


@pytest.mark.parametrize("name, kwargs", [
    ("schedule_free_adamw", dict(learning_rate=0.05, warmup_steps=10, weight_decay=0.01)),
    ("schedule_free_sgd", dict(learning_rate=0.01, warmup_steps=10, weight_decay=0.01)),
])
def test_optax_own_functions_with_warmup(name, kwargs):
    """optax.contrib's own functions (its float32 warmup schedule), at float32 tolerance."""
    with jax.numpy_dtype_promotion("standard"):
        ref_y, ref_x, _ = _run(getattr(optax.contrib, name)(**kwargs), apply=optax.apply_updates,
                               eval_fn=optax.contrib.schedule_free_eval_params)
    y, x, _ = _run(getattr(aj, name)(**kwargs))
    np.testing.assert_allclose(y["x"], ref_y["x"], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(x["x"], ref_x["x"], rtol=2e-5, atol=2e-6)


def test_wrapper_matches_optax_wrapper(x64):
    """aj.schedule_free around a base with its own (changing) rate = optax's, in float64."""
    sched = lambda c: 0.05 * 0.97 ** jnp.asarray(c, jnp.float64)  # noqa: E731
    p0 = {"x": jnp.asarray(Q["x0"])}
    with jax.numpy_dtype_promotion("standard"):
        ref_y, ref_x, _ = _run(
            optax.contrib.schedule_free(optax.adam(sched, b1=0.0), sched, b1=0.8),
            params=p0, apply=optax.apply_updates,
            eval_fn=optax.contrib.schedule_free_eval_params,
        )
    y, x, _ = _run(aj.schedule_free(aj.adam(sched, b1=0.0), sched, b1=0.8), params=p0)
    np.testing.assert_allclose(y["x"], ref_y["x"], rtol=1e-10)
    np.testing.assert_allclose(x["x"], ref_x["x"], rtol=1e-10)
    # the wrapper applying the rate itself to a direction: the same trajectory
    direction = aj.schedule_free(aj.scale_by_adam(b1=0.0), sched, b1=0.8,
                                 base_includes_learning_rate=False)
    y2, x2, state = _run(direction, params=p0)
    np.testing.assert_allclose(y2["x"], y["x"], rtol=1e-12)
    assert float(aj.get_hyperparams(state)["learning_rate"]) == pytest.approx(sched(29))


def test_first_step_and_eval_point():
    """Step 1: c = 1, so x = y = z = z_0 - eta d; optax's helper reads our state too."""
    tx = aj.schedule_free_sgd(0.5, b1=0.9)
    params = {"w": jnp.array([1.0, -2.0])}
    u, state = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
    y = aj.apply_updates(params, u)
    np.testing.assert_allclose(y["w"], [0.5, -2.5])
    np.testing.assert_allclose(state.z["w"], [0.5, -2.5])
    u, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, y)
    y = aj.apply_updates(y, u)
    # z = z_1 - 0.5; c_2 = 1/2 (equal weights): x = (z_1 + z_2)/2; y = 0.9 x + 0.1 z
    np.testing.assert_allclose(state.z["w"], [0.0, -3.0])
    np.testing.assert_allclose(aj.schedule_free_eval_params(state, y)["w"], [0.25, -2.75],
                               rtol=1e-6)
    np.testing.assert_allclose(y["w"], [0.9 * 0.25, 0.9 * -2.75 - 0.3], rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.contrib.schedule_free_eval_params(state, y)
    np.testing.assert_allclose(theirs["w"], [0.25, -2.75], rtol=1e-6)


def test_eval_point_is_the_weighted_average_of_z(x64):
    """x_T = sum_t w_t z_t / sum_t w_t, w_t = t^r * (max_{i<=t} eta_i)^weight_lr_power."""
    tx = aj.schedule_free_sgd(0.01, warmup_steps=5, r=1.0, weight_lr_power=2.0,
                              convention="schedulefree")
    p = {"x": jnp.asarray(Q["x0"])}
    state, zs, weights = tx.init(p), [], []
    for t in range(1, 13):
        u, state = tx.update(jax.grad(_loss)(p), state, p)
        p = aj.apply_updates(p, u)
        zs.append(np.asarray(state.z["x"]))
        weights.append(t * (0.01 * min(t / 5, 1)) ** 2)
    w = np.asarray(weights)[:, None]
    expected = (w * np.stack(zs)).sum(0) / w.sum()
    np.testing.assert_allclose(aj.schedule_free_eval_params(state, p)["x"], expected, rtol=1e-12)
    np.testing.assert_allclose(p["x"], 0.9 * expected + 0.1 * zs[-1], rtol=1e-12)


def test_eval_params_in_chains_and_partitions():
    params = {"w": jnp.ones(3), "b": jnp.ones(2), "i": jnp.int32(3)}
    grads = {"w": jnp.full(3, 0.5), "b": jnp.ones(2), "i": np.zeros((), jax.dtypes.float0)}
    tx = aj.partition({"sf": aj.schedule_free_sgd(0.1), "ad": aj.adam(0.1)},
                      {"w": "sf", "b": "ad", "i": "ad"})
    state = tx.init(params)
    for _ in range(3):
        u, state = tx.update(grads, state, params)
        params = aj.apply_updates(params, u)
    x = aj.schedule_free_eval_params(state, params)
    sf = aj.schedule_free_sgd(0.1)
    p, s = {"w": jnp.ones(3)}, sf.init({"w": jnp.ones(3)})
    for _ in range(3):
        u, s = sf.update({"w": grads["w"]}, s, p)
        p = aj.apply_updates(p, u)
    np.testing.assert_allclose(x["w"], aj.schedule_free_eval_params(s, p)["w"], rtol=1e-6)
    assert x["b"] is params["b"] and int(x["i"]) == 3
    chained = aj.chain(aj.clip_by_global_norm(1.0), aj.schedule_free_adamw(0.1))
    assert aj.schedule_free_eval_params(chained.init(params), params)["w"].shape == (3,)
    with pytest.raises(ValueError, match="no ScheduleFreeState"):
        aj.schedule_free_eval_params(aj.adam(0.1).init(params), params)
    twice = aj.chain(aj.schedule_free_sgd(0.1), aj.schedule_free_sgd(0.1))
    with pytest.raises(ValueError, match="several"):
        aj.schedule_free_eval_params(twice.init(params), params)


def test_hyperparams_in_state():
    tx = aj.schedule_free_adamw(0.1, warmup_steps=4, weight_decay=0.01,
                                convention="schedulefree")
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert set(aj.get_hyperparams(state)) == {"learning_rate", "b1", "b2", "weight_decay"}
    for k in range(1, 6):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        used = aj.get_hyperparams(state)["learning_rate"]
        assert float(used) == pytest.approx(0.1 * min(k / 4, 1))  # warmup counts step k
    # a number is read from state: set_hyperparams changes the next step
    sgd = aj.schedule_free_sgd(0.1)
    state = aj.set_hyperparams(sgd.init(params), learning_rate=0.3)
    u, _ = sgd.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(u["w"], -0.3)
    with pytest.raises(ValueError, match="b1"):
        aj.set_hyperparams(state, b1=0.0)


def test_state_dtype_and_distinct_buffers():
    params = {"w": jnp.ones(4, jnp.float32)}
    tx = aj.schedule_free_adamw(0.1, state_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert state.z["w"].dtype == jnp.bfloat16
    assert state.base_optimizer_state[0].nu["w"].dtype == jnp.bfloat16
    u, state = tx.update({"w": jnp.ones(4)}, state, params)
    assert u["w"].dtype == jnp.float32 and state.z["w"].dtype == jnp.bfloat16
    state = aj.schedule_free_sgd(0.1).init(params)
    assert state.z["w"] is not params["w"]
    assert state.z["w"].unsafe_buffer_pointer() != params["w"].unsafe_buffer_pointer()


def test_inject_hyperparams():
    tx = optax.inject_hyperparams(aj.schedule_free_adamw)(learning_rate=0.05, b1=0.9)
    params = {"x": jnp.asarray(Q["x0"], jnp.float32)}
    y, _, _ = _run(tx, steps=20, params=params, eval_fn=lambda s, p: p)
    ref, _, _ = _run(aj.schedule_free_adamw(0.05), steps=20, params=params)
    np.testing.assert_allclose(y["x"], ref["x"], rtol=1e-6)


BAD = [
    (aj.schedule_free_adamw, dict(b1=0.0), "b1", r"\(0, 1\)"),
    (aj.schedule_free_adamw, dict(b1=1.0), "b1", r"\(0, 1\)"),
    (aj.schedule_free_adamw, dict(b2=1.0), "b2", r"\[0, 1\)"),
    (aj.schedule_free_adamw, dict(learning_rate=-1.0), "learning_rate", r"\[0, inf"),
    (aj.schedule_free_adamw, dict(weight_lr_power=-1.0), "weight_lr_power", r"\[0, inf"),
    (aj.schedule_free_adamw, dict(r=-1.0), "r", r"\[0, inf"),
    (aj.schedule_free_adamw, dict(warmup_steps=-1), "warmup_steps", r"\[0, inf"),
    (aj.schedule_free_adamw, dict(warmup_steps=2.5), "warmup_steps", "integer"),
    (aj.schedule_free_adamw, dict(weight_decay=-0.1), "weight_decay", r"\[0, inf"),
    (aj.schedule_free_adamw, dict(weight_decay=0.1, convention="keras"), "weight_decay", "keras"),
    (aj.schedule_free_adamw, dict(convention="jax"), "convention", "schedulefree"),
    (aj.schedule_free_sgd, dict(convention="keras"), "convention", "schedulefree"),
    (aj.schedule_free_sgd, dict(state_dtype=jnp.int32), "state_dtype", "floating"),
    (aj.schedule_free, dict(base_optimizer=None, learning_rate=0.1), "base_optimizer", "Gradient"),
]


@pytest.mark.parametrize("factory, kwargs, name, allowed", BAD)
def test_bad_argument_is_rejected(factory, kwargs, name, allowed):
    with pytest.raises(ValueError, match=name) as info:
        factory(**kwargs)
    assert pytest.importorskip("re").search(allowed, str(info.value)), str(info.value)


def test_torch_is_an_alias_of_schedulefree():
    a = aj.schedule_free_sgd(0.01, warmup_steps=3, convention="torch")
    b = aj.schedule_free_sgd(0.01, warmup_steps=3, convention="schedulefree")
    np.testing.assert_array_equal(_run(a, 5)[0]["x"], _run(b, 5)[0]["x"])


def _flat_run(tx, steps=5):
    flat, layout = aj.flatten_params({"x": jnp.asarray(Q["x0"], jnp.float32)})
    loss = lambda f: _loss(layout.unflatten(f))  # noqa: E731
    state = tx.init(flat)
    step = jax.jit(lambda f, s: (lambda u, s: (aj.apply_updates(f, u), s))(
        *tx.update(jax.grad(loss)(f), s, f)))
    for _ in range(steps):
        flat, state = step(flat, state)
    return {"x": layout.unflatten(aj.schedule_free_eval_params(state, flat))["x"]}


WRAPPERS = {
    "make_step": None,
    "partition": lambda tx: aj.partition({"a": tx}, lambda p: jax.tree.map(lambda _: "a", p)),
    "skip_non_finite": aj.skip_non_finite,
    "accumulate_gradients": lambda tx: aj.accumulate_gradients(tx, 1),
    "flat_params": None,
    "sharded_jit": None,
    "pmap": None,
}


@pytest.mark.parametrize("how", sorted(WRAPPERS))
def test_works_in_the_library(how):
    """5 steps through each wrapper / execution mode equal 5 plain steps (train and eval)."""
    make = lambda: aj.schedule_free_adamw(0.05, warmup_steps=2, weight_decay=0.01)  # noqa: E731
    y_ref, x_ref, _ = _run(make(), steps=5)
    if how == "make_step":
        tx = make()
        step = aj.make_step(tx)
        p = {"x": jnp.asarray(Q["x0"], jnp.float32)}
        s = tx.init(p)
        for _ in range(5):
            p, s = step(p, s, jax.grad(_loss)(p))
        y, x = p, aj.schedule_free_eval_params(s, p)
    elif how == "flat_params":
        y, x = y_ref, _flat_run(make())
    elif how == "sharded_jit":
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
        p = {"x": jax.device_put(jnp.asarray(Q["x0"], jnp.float32), spec)}
        y, x, state = _run(make(), steps=5, params=p)
        assert state.z["x"].sharding.is_equivalent_to(spec, 1)
    elif how == "pmap":  # 8 replicas, gradients averaged: the one-device trajectory
        tx, n = make(), jax.device_count()

        def replica_step(p, s):
            u, s = tx.update(jax.lax.pmean(jax.grad(_loss)(p), "d"), s, p)
            return aj.apply_updates(p, u), s

        step = jax.pmap(replica_step, axis_name="d")
        p = {"x": jnp.asarray(Q["x0"], jnp.float32)}
        ps, ss = jax.tree.map(lambda a: jnp.stack([a] * n), (p, tx.init(p)))
        for _ in range(5):
            ps, ss = step(ps, ss)
        y, s = jax.tree.map(lambda a: a[n - 1], (ps, ss))
        x = aj.schedule_free_eval_params(s, y)
    else:
        y, x, _ = _run(WRAPPERS[how](make()), steps=5)
    np.testing.assert_allclose(y["x"], y_ref["x"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(x["x"], x_ref["x"], rtol=1e-6, atol=1e-7)
