"""Hyperparameters in the optimizer state: reading them for logging, changing them between
steps without recompiling, schedules recorded at every step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj

PARAMS = {"w": jnp.ones(3), "b": jnp.zeros(2)}
GRADS = {"w": jnp.full(3, 0.5), "b": jnp.ones(2)}


def floats(hp: dict) -> dict:
    return {k: round(float(v), 6) for k, v in hp.items()}


@pytest.mark.parametrize(
    "tx, want",
    [
        (aj.sgd(0.1), {"learning_rate": 0.1}),
        (aj.sgd(0.1, momentum=0.9), {"learning_rate": 0.1, "momentum": 0.9}),
        (aj.sgd(0.1, momentum=0.9, convention="keras"), {"learning_rate": 0.1, "momentum": 0.9}),
        (aj.adam(1e-3, b1=0.8), {"learning_rate": 0.001, "b1": 0.8, "b2": 0.999}),
        (aj.rmsprop(0.01, momentum=0.5), {"learning_rate": 0.01, "momentum": 0.5}),
        (aj.adamw(1e-3, weight_decay=0.01),
         {"learning_rate": 0.001, "b1": 0.9, "b2": 0.999, "weight_decay": 0.01}),
        (aj.chain(aj.adam(0.01), aj.reduce_on_plateau()),
         {"learning_rate": 0.01, "b1": 0.9, "b2": 0.999, "scale": 1.0}),
        (optax.chain(optax.clip(1.0),
                     aj.masked(aj.sgd(0.2, momentum=0.5), {"w": True, "b": False})),
         {"learning_rate": 0.2, "momentum": 0.5}),
    ],
    ids=["sgd", "momentum", "keras-momentum", "adam", "rmsprop", "adamw", "plateau", "optax-mask"],
)
def test_reads_learning_rate_and_momentum_whatever_the_chain(tx, want):
    state = tx.init(PARAMS)
    assert floats(aj.get_hyperparams(state)) == want
    _, state = tx.update(GRADS, state, PARAMS, **({"value": 1.0} if "scale" in want else {}))
    assert floats(aj.get_hyperparams(state)) == want


def test_names_that_occur_several_times_are_keyed_by_path():
    tx = aj.partition({"body": aj.sgd(0.1, momentum=0.9), "head": aj.adam(0.01)},
                      {"w": "body", "b": "head"})
    hp = aj.get_hyperparams(tx.init(PARAMS))
    lr_keys = sorted(k for k in hp if k.endswith("/learning_rate"))
    assert len(lr_keys) == 2 and "learning_rate" not in hp
    assert floats({k: hp[k] for k in lr_keys}) == {
        ".inner_states['body'].inner_state[1]/learning_rate": 0.1,
        ".inner_states['head'].inner_state[1]/learning_rate": 0.01,
    }
    assert float(hp["momentum"]) == pytest.approx(0.9)  # unique: the bare name


def test_set_one_group_by_its_key_or_every_group_by_the_bare_name():
    tx = aj.partition({"body": aj.sgd(0.1), "head": aj.sgd(0.01)}, {"w": "body", "b": "head"})
    state = tx.init(PARAMS)
    head = ".inner_states['head'].inner_state[0]/learning_rate"
    assert head in aj.get_hyperparams(state)
    one = aj.set_hyperparams(state, **{head: 0.5})
    u, _ = tx.update(GRADS, one, PARAMS)
    np.testing.assert_allclose(u["w"], -0.1 * 0.5)
    np.testing.assert_allclose(u["b"], -0.5)
    every = aj.set_hyperparams(state, learning_rate=0.2)
    u, _ = tx.update(GRADS, every, PARAMS)
    np.testing.assert_allclose(u["w"], -0.2 * 0.5)
    np.testing.assert_allclose(u["b"], -0.2)
    # get -> set round trip.
    halved = aj.set_hyperparams(state, **{k: v / 2 for k, v in aj.get_hyperparams(state).items()})
    assert floats(aj.get_hyperparams(halved)) == {
        k: round(float(v) / 2, 6) for k, v in aj.get_hyperparams(state).items()
    }


def test_changing_hyperparameters_between_steps_does_not_recompile():
    tx = aj.sgd(0.1, momentum=0.9)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)  # Python side effect: runs only when the step is traced
        updates, state = tx.update(jax.tree.map(lambda p: 2.0 * p, params), state, params)
        return aj.apply_updates(params, updates), state

    params, state = PARAMS, tx.init(PARAMS)
    params, state = step(params, state)
    for lr, momentum in [(0.01, 0.5), (np.float64(0.3), 0.0), (jnp.asarray(0.05), 0.99)]:
        state = aj.set_hyperparams(state, learning_rate=lr, momentum=momentum)
        new_params, new_state = step(params, state)
        hp = aj.get_hyperparams(new_state)
        assert float(hp["learning_rate"]) == pytest.approx(float(lr))
        assert float(hp["momentum"]) == pytest.approx(momentum)
        # The step used the new values: v = m * v + g; w <- w - lr * v.
        velocity = momentum * state[0].trace["w"] + 2.0 * params["w"]
        np.testing.assert_allclose(new_params["w"], params["w"] - float(lr) * velocity, rtol=1e-6)
        params, state = new_params, new_state
    assert len(traces) == 1 and step._cache_size() == 1
    assert all(v.dtype == jnp.float32 and v.shape == () for v in aj.get_hyperparams(state).values())


def test_set_hyperparams_inside_jit():
    tx = aj.adam(0.1)

    @jax.jit
    def step(state, lr):
        state = aj.set_hyperparams(state, learning_rate=lr)
        return tx.update(GRADS, state, PARAMS)

    u1, _ = step(tx.init(PARAMS), 0.1)
    u2, _ = step(tx.init(PARAMS), 0.2)
    np.testing.assert_allclose(u2["w"], 2 * u1["w"], rtol=1e-6)
    assert step._cache_size() == 1


def test_schedules_are_recorded_at_every_step():
    lr = aj.one_cycle(0.1, 20)
    momentum = aj.one_cycle_momentum(20)
    b1 = aj.linear_schedule(0.9, 0.5, 10)
    tx = aj.chain(
        aj.partition({"a": aj.sgd(lr, momentum=momentum), "b": aj.adam(0.01, b1=b1)},
                     {"w": "a", "b": "b"}),
        aj.reduce_on_plateau(0.5, 0),
    )

    @jax.jit
    def step(state, value):
        return tx.update(GRADS, state, PARAMS, value=value)[1]

    state = tx.init(PARAMS)
    for k in range(25):
        state = step(state, jnp.float32(1.0 / (k + 1)))  # improving: the scale stays 1
        hp = aj.get_hyperparams(state)
        lrs = sorted(float(v) for key, v in hp.items() if key.endswith("learning_rate"))
        want = sorted([float(lr(k)), 0.01])
        np.testing.assert_allclose(lrs, want, rtol=1e-5)  # float32, jitted vs eager
        np.testing.assert_allclose(hp["momentum"], momentum(k), rtol=1e-5)
        np.testing.assert_allclose(hp["b1"], b1(k), rtol=1e-5)
        assert float(hp["scale"]) == 1.0
    assert step._cache_size() == 1


def test_setting_a_scheduled_hyperparameter_has_no_effect():
    tx = aj.sgd(aj.constant_schedule(0.1))
    state = aj.set_hyperparams(tx.init(PARAMS), learning_rate=5.0)
    u, state = tx.update(GRADS, state, PARAMS)
    np.testing.assert_allclose(u["w"], -0.05, rtol=1e-6)
    assert float(aj.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


def test_unknown_name_lists_the_available_ones():
    state = aj.sgd(0.1, momentum=0.9).init(PARAMS)
    with pytest.raises(KeyError, match=r"lr.*available.*learning_rate.*momentum"):
        aj.set_hyperparams(state, lr=0.1)


def test_states_without_hyperparams():
    assert aj.get_hyperparams(aj.identity().init(PARAMS)) == {}
    assert aj.get_hyperparams(optax.adam(0.1).init(PARAMS)) == {}
    # optax's inject_hyperparams keeps them under the same field name: read too.
    state = optax.inject_hyperparams(optax.adam)(learning_rate=0.1).init(PARAMS)
    assert float(aj.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


def test_a_restored_state_keeps_its_hyperparameters_unless_asked():
    """Resuming with another lr/momentum: the checkpoint's values by default (as torch),
    the new optimizer's with with_hyperparams_of (as optax)."""
    params = {"w": jnp.ones(2)}
    old_tx = aj.sgd(0.1, momentum=0.9)
    saved = old_tx.init(params)
    for _ in range(2):
        _, saved = old_tx.update({"w": jnp.ones(2)}, saved, params)
    new_tx = aj.sgd(0.01, momentum=0.5)
    kept = aj.get_hyperparams(saved)
    assert float(kept["learning_rate"]) == pytest.approx(0.1)
    assert float(kept["momentum"]) == pytest.approx(0.9)
    updates, _ = new_tx.update({"w": jnp.ones(2)}, saved, params)  # the checkpoint's values
    taken = aj.with_hyperparams_of(saved, new_tx.init(params))
    hp = aj.get_hyperparams(taken)
    assert float(hp["learning_rate"]) == pytest.approx(0.01)
    assert float(hp["momentum"]) == pytest.approx(0.5)
    np.testing.assert_array_equal(taken[0].trace["w"], saved[0].trace["w"])  # moments kept
    assert int(taken[0].count) == 2
    new_updates, _ = new_tx.update({"w": jnp.ones(2)}, taken, params)
    # velocity 1.9 -> 0.5 * 1.9 + 1 = 1.95, times the new lr (0.9 * 1.9 + 1 = 2.71 times 0.1 before)
    np.testing.assert_allclose(updates["w"], -0.1 * 2.71, rtol=1e-6)
    np.testing.assert_allclose(new_updates["w"], -0.01 * 1.95, rtol=1e-6)


def test_with_hyperparams_of_names_a_structure_mismatch():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="with_hyperparams_of"):
        aj.with_hyperparams_of(aj.adam(0.1).init(params), aj.sgd(0.1, momentum=0.9).init(params))


def test_one_array_given_for_several_hyperparameters_makes_distinct_buffers():
    """An array passed to two constructors, or set in two groups, must not become one buffer
    under two state fields (make_step, donating, would fail) nor be donated itself."""
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    grads = {"a": jnp.ones(2), "b": jnp.ones(2)}
    lr = jnp.asarray(0.1)
    tx = aj.partition({"x": aj.sgd(lr), "y": aj.sgd(lr)}, {"a": "x", "b": "y"})
    state = aj.set_hyperparams(tx.init(params), learning_rate=jnp.asarray(0.3))
    leaves = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    assert len(set(leaves)) == len(leaves)
    new_params, _ = aj.make_step(tx)(params, state, grads)
    np.testing.assert_allclose(new_params["a"], 0.7, rtol=1e-6)
    assert float(lr) == pytest.approx(0.1)  # the caller's array is not donated


def test_get_hyperparams_reads_through_nnx_optimizer_variables():
    """nnx.Optimizer keeps the state in OptArray variables; the values come back as arrays,
    so logging needs no unwrapping (the README's quickstart prints them)."""
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(3))

    optimizer = nnx.Optimizer(Model(), aj.adam(1e-3), wrt=nnx.Param)
    hp = aj.get_hyperparams(optimizer.opt_state)
    assert all(isinstance(x, jax.Array) for x in hp.values()), {k: type(x) for k, x in hp.items()}
    assert float(hp["learning_rate"]) == pytest.approx(1e-3)
