"""L1 proximal step, max-norm and magnitude pruning: the invariant of each, checked directly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import accel_jax as aj
from tests import problems


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "kernel": jnp.asarray(rng.normal(size=(8, 6)), dtype),
        "bias": jnp.asarray(rng.normal(size=6), dtype),
        "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), dtype),
    }


def _grads(seed=1, dtype=jnp.float32):
    return jax.tree.map(lambda x: x * 3.0, _params(seed, dtype))


def _step(tx, params, grads, state=None):
    state = tx.init(params) if state is None else state
    updates, state = jax.jit(tx.update)(grads, state, params)
    return aj.apply_updates(params, updates), updates, state


# --------------------------------------------------------------------------- L1 proximal step


def _soft_threshold(z, tau):
    z = np.asarray(z, np.float64)
    return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


def test_l1_proximal_equals_closed_form_soft_threshold():
    params, grads = _params(), _grads()
    lr, l1 = 0.1, 4.0  # threshold 0.4: a good part of the coordinates hit zero
    tx = aj.chain(aj.sgd(lr), aj.l1_proximal(l1, lr))
    new, _, _ = _step(tx, params, grads)
    for k in params:
        z = np.asarray(params[k]) - lr * np.asarray(grads[k])
        want = _soft_threshold(z, lr * l1)
        got = np.asarray(new[k])
        assert np.all(got[want == 0] == 0.0), k  # exact zeros
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert 0 < np.mean(want == 0) < 1, "the test must exercise both branches"


def test_l1_proximal_follows_the_learning_rate_schedule():
    params = _params()
    schedule = lambda t: 0.2 / (1.0 + t.astype(jnp.float32))
    tx = aj.chain(aj.sgd(schedule), aj.l1_proximal(1.0, schedule))
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)  # pure shrinkage: |w| decreases by eta_t
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(4):
        params, _, state = _step(tx, params, grads, state)
        w = {k: _soft_threshold(v, 0.2 / (1 + t)) for k, v in w.items()}
        for k in params:
            np.testing.assert_allclose(np.asarray(params[k]), w[k], rtol=1e-6, atol=1e-6)
    hp = aj.get_hyperparams(state)
    assert float(hp["l1"]) == 1.0


def test_l1_proximal_mask_and_hyperparams():
    params, grads = _params(), _grads()
    mask = {"kernel": True, "bias": False, "conv": False}
    plain = aj.sgd(0.1)
    tx = aj.chain(plain, aj.l1_proximal(100.0, 0.1, mask=mask))  # threshold 10 > every |z|
    new, _, state = _step(tx, params, grads)
    ref, _, _ = _step(plain, params, grads)
    assert np.all(np.asarray(new["kernel"]) == 0.0)
    for k in ("bias", "conv"):
        np.testing.assert_array_equal(np.asarray(new[k]), np.asarray(ref[k]))
    # The numeric strength can be changed between steps without recompiling.
    state = aj.set_hyperparams(state, l1=0.0)
    assert float(aj.get_hyperparams(state)["l1"]) == 0.0


def test_l1_proximal_trains_to_a_sparse_solution():
    prob = problems.small_mlp()
    params = problems.as_params(prob, problems.MLP_PARAM_NAMES, jnp.float32)
    x, y = jnp.asarray(prob["X"], jnp.float32), jnp.asarray(prob["Y"], jnp.float32)
    tx = aj.chain(aj.adam(1e-2), aj.l1_proximal(0.5, 1e-2))

    def body(carry, _):
        p, s = carry
        g = jax.grad(problems.mlp_loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return (aj.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), length=200)
    zeros = sum(int(jnp.sum(v == 0)) for v in jax.tree.leaves(params))
    total = sum(v.size for v in jax.tree.leaves(params))
    assert zeros / total > 0.25  # a subgradient penalty gives none (measured: 43 of 123)


def test_l1_proximal_validation_and_params_needed():
    with pytest.raises(ValueError, match="l1"):
        aj.l1_proximal(-1.0, 0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        aj.l1_proximal(1.0, -0.1)
    tx = aj.l1_proximal(1.0, 0.1)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(_grads(), tx.init(_params()))


# --------------------------------------------------------------------------- max-norm


@pytest.mark.parametrize("axis", [0, (0, 1, 2), None])
def test_max_norm_bounds_every_unit_and_leaves_others_bit_identical(axis):
    params = _params()
    grads = jax.tree.map(lambda g: g * 0.5, _grads())
    leaf = "kernel" if axis == 0 else "conv"
    mask = {"kernel": leaf == "kernel", "bias": False, "conv": leaf == "conv"}
    plain = aj.sgd(0.1)
    ref, _, _ = _step(plain, params, grads)
    axes = (0,) if leaf == "kernel" else (0, 1, 2)
    norms_free = np.sqrt(np.sum(np.asarray(ref[leaf], np.float64) ** 2, axis=axes))
    r = float(np.median(norms_free))
    new, _, _ = _step(aj.chain(plain, aj.max_norm(r, axis=axis, mask=mask)), params, grads)
    norms_after = np.sqrt(np.sum(np.asarray(new[leaf], np.float64) ** 2, axis=axes))
    assert np.any(norms_free > r) and np.any(norms_free <= r), "both kinds of unit"
    assert np.all(norms_after <= r * (1 + 1e-6))
    inside = norms_free <= r
    np.testing.assert_allclose(norms_after[~inside], r, rtol=1e-6)
    # units inside the ball: bit-identical to the unconstrained step
    np.testing.assert_array_equal(
        np.asarray(new[leaf])[..., inside], np.asarray(ref[leaf])[..., inside]
    )
    np.testing.assert_array_equal(np.asarray(new["bias"]), np.asarray(ref["bias"]))
    # direction kept: rescaled units are parallel to the unconstrained ones
    scale = np.asarray(new[leaf], np.float64) / np.asarray(ref[leaf], np.float64)
    np.testing.assert_allclose(
        scale[..., ~inside],
        (r / norms_free[~inside]) * np.ones_like(scale[..., ~inside]),
        rtol=1e-5,
    )


def test_max_norm_matches_keras_formula():
    # Keras MaxNorm: w * clip(||w||, 0, r) / (1e-7 + ||w||) on axis 0.
    params = {"w": _params()["kernel"]}
    zero = {"w": jnp.zeros_like(params["w"])}
    new, _, _ = _step(aj.max_norm(1.5, axis=0), params, zero)
    w = np.asarray(params["w"], np.float64)
    norms = np.sqrt(np.sum(w**2, axis=0, keepdims=True))
    keras = w * np.clip(norms, 0, 1.5) / (1e-7 + norms)
    np.testing.assert_allclose(np.asarray(new["w"]), keras, rtol=1e-5)


def test_max_norm_errors():
    with pytest.raises(ValueError, match="max_value"):
        aj.max_norm(0.0)
    with pytest.raises(ValueError, match="axis"):
        aj.max_norm(1.0, axis="rows")
    tx = aj.max_norm(1.0, axis=3)
    with pytest.raises(ValueError, match="out of range"):
        tx.update({"w": jnp.ones((2, 2))}, tx.init(None), {"w": jnp.ones((2, 2))})


# --------------------------------------------------------------------------- magnitude pruning


def _tfmot_sparsity(step, initial, final, begin, end, power):
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


def test_polynomial_sparsity_is_tfmot_polynomial_decay():
    for step in (0, 10, 17, 50, 90, 100, 150):
        got = float(aj.polynomial_sparsity(jnp.asarray(step), 0.1, 0.8, 10, 100, 3.0))
        np.testing.assert_allclose(got, _tfmot_sparsity(step, 0.1, 0.8, 10, 100, 3.0), rtol=1e-6)
    assert float(aj.polynomial_sparsity(jnp.asarray(4), 0.0, 0.5, 5, 5)) == 0.0
    assert float(aj.polynomial_sparsity(jnp.asarray(5), 0.0, 0.5, 5, 5)) == 0.5


def _prune_run(scope, n_steps=13, mask=None, params=None):
    """SGD + pruning on a quadratic-ish loss; returns params and masks after every step."""
    params = _params() if params is None else params
    cfg = dict(initial_sparsity=0.25, begin_step=2, end_step=10, frequency=4, power=1.0)
    tx = aj.chain(aj.sgd(0.05), aj.prune_by_magnitude(0.75, scope=scope, mask=mask, **cfg))
    loss = lambda p: sum(jnp.sum(jnp.sin(3 * v) * v) for v in jax.tree.leaves(p))

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        p = aj.apply_updates(p, u)
        return (p, s), p

    (_, state), history = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), length=n_steps))(
        params
    )
    return history, state, cfg


def _expected_pruned(n, sparsity):
    return n - max(int(np.round(n * (1 - sparsity))), 1)


@pytest.mark.parametrize("scope", ["per_leaf", "global"])
def test_pruning_reaches_the_scheduled_sparsity_and_pruned_weights_stay_zero(scope):
    history, _, cfg = _prune_run(scope)
    leaves = ("bias", "conv", "kernel")  # tree order
    pruning_steps = [2, 6, 10]
    zero_before = None
    for t in range(13):
        zero = {k: np.asarray(history[k][t]) == 0 for k in leaves}
        target = (
            0.0
            if t < 2
            else _tfmot_sparsity(max(s for s in pruning_steps if s <= t), 0.25, 0.75, 2, 10, 1.0)
        )
        if scope == "per_leaf":
            for k in leaves:
                assert zero[k].sum() == _expected_pruned(zero[k].size, target), (t, k)
        else:
            total = sum(zero[k].size for k in leaves)
            assert sum(zero[k].sum() for k in leaves) == _expected_pruned(total, target), t
        if zero_before is not None:  # once pruned, always zero
            for k in leaves:
                assert np.all(zero[k][zero_before[k]]), (t, k)
        zero_before = zero
    assert cfg["frequency"] == 4


def test_pruning_keeps_the_smallest_magnitudes_out():
    params = _params()
    tx = aj.chain(aj.sgd(0.0), aj.prune_by_magnitude(0.5, scope="global"))
    new, _, state = _step(tx, params, jax.tree.map(jnp.zeros_like, params))
    mags = np.concatenate([np.abs(np.asarray(v)).ravel() for v in jax.tree.leaves(params)])
    kept = np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(state[1].masks)])
    assert kept.sum() == len(mags) // 2
    assert mags[kept].min() >= mags[~kept].max()
    # kept weights are exactly the unpruned step
    for k in params:
        keep = np.asarray(state[1].masks[k])
        np.testing.assert_array_equal(np.asarray(new[k])[keep], np.asarray(params[k])[keep])


def test_pruning_sparsity_is_exact_with_ties():
    params = {"w": jnp.ones((10,)), "v": jnp.zeros((6,))}
    tx = aj.chain(aj.sgd(0.0), aj.prune_by_magnitude(0.5, scope="per_leaf"))
    new, _, _ = _step(tx, params, jax.tree.map(jnp.zeros_like, params))
    assert int(jnp.sum(new["w"] == 0)) == 5
    np.testing.assert_array_equal(np.asarray(new["w"]), [0] * 5 + [1] * 5)  # lower index first


def test_pruning_mask_selects_kernels_only():
    history, state, _ = _prune_run("global", mask={"kernel": True, "bias": False, "conv": True})
    assert np.all(np.asarray(history["bias"][-1]) != 0)
    pruned = sum(int(np.sum(np.asarray(history[k][-1]) == 0)) for k in ("kernel", "conv"))
    assert pruned == _expected_pruned(48 + 72, 0.75)


def test_pruning_between_steps_and_after_end_keeps_the_mask():
    history, _, _ = _prune_run("per_leaf", n_steps=16)
    for t in (11, 12, 13, 14, 15):  # after end_step=10: mask fixed
        for k in history:
            np.testing.assert_array_equal(
                np.asarray(history[k][t]) == 0, np.asarray(history[k][10]) == 0
            )
    for t in (3, 4, 5):  # between pruning steps 2 and 6
        for k in history:
            np.testing.assert_array_equal(
                np.asarray(history[k][t]) == 0, np.asarray(history[k][2]) == 0
            )


def test_global_pruning_on_eight_devices_matches_one():
    assert len(jax.devices()) == 8
    rng = np.random.default_rng(3)
    params = {
        "a": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(32,)), jnp.float32),
    }
    grads = jax.tree.map(lambda x: 0.1 * x**2, params)
    tx = aj.chain(aj.sgd(0.1), aj.prune_by_magnitude(0.7, scope="global"))
    step = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))
    want, want_state = step(grads, params)
    mesh = Mesh(np.array(jax.devices()), ("x",))
    shard = NamedSharding(mesh, P("x"))
    sharded = jax.device_put(params, shard)
    assert len(sharded["a"].sharding.device_set) == 8
    got, got_state = step(jax.device_put(grads, shard), sharded)
    for k in params:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
        np.testing.assert_array_equal(
            np.asarray(got_state[1].masks[k]), np.asarray(want_state[1].masks[k])
        )


def test_pruning_validation():
    with pytest.raises(ValueError, match="final_sparsity"):
        aj.prune_by_magnitude(1.0)
    with pytest.raises(ValueError, match="initial_sparsity"):
        aj.prune_by_magnitude(0.5, initial_sparsity=0.6)
    with pytest.raises(ValueError, match="end_step"):
        aj.prune_by_magnitude(0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="frequency"):
        aj.prune_by_magnitude(0.5, frequency=0)
    with pytest.raises(ValueError, match="scope"):
        aj.prune_by_magnitude(0.5, scope="layer")
    tx = aj.prune_by_magnitude(0.5)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="path"):
        tx.update({"v": jnp.ones(3)}, tx.init(params), {"v": jnp.ones(3)})


def test_constraints_keep_dtype_and_pass_integer_leaves():
    params = {"w": jnp.asarray(_params()["kernel"], jnp.bfloat16), "step": jnp.asarray(3)}
    grads = jax.grad(lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 2), allow_int=True)(params)
    for tx in (
        aj.l1_proximal(1.0, 0.1),
        aj.max_norm(1.0, axis=0),
        aj.prune_by_magnitude(0.5),
    ):
        full = aj.chain(aj.sgd(0.1), tx)
        new, updates, _ = _step(full, params, grads)
        assert updates["w"].dtype == jnp.bfloat16 and new["w"].dtype == jnp.bfloat16
        assert int(new["step"]) == 3
