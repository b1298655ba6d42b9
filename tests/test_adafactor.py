"""Adafactor's building blocks and optimizer: optax live, torch's layout, memory, the library.

Trajectory conformance (optax, torch.optim goldens, Keras) is
tests/test_conformance_adafactor.py; LAMB/LARS are in tests/test_trust_ratio.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj


def _tree():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "w": jax.random.normal(k[0], (6, 12)),
        "t": jax.random.normal(k[1], (4, 3, 5)),
        "b": jax.random.normal(k[2], (12,)) * 0.01,  # rms below min_scale
    }


def _grads(i):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(i), p.shape) * 3, _tree())


def _run(tx, steps=4, standard=False):
    params = _tree()
    state, update = tx.init(params), jax.jit(tx.update)
    for i in range(steps):
        with jax.numpy_dtype_promotion("standard" if standard else "strict"):
            u, state = update(_grads(i), state, params)
        params = jax.tree.map(lambda p, d: p + d, params, u)
    return params, state


BLOCKS = {
    "factored_rms": (
        lambda: aj.scale_by_factored_rms(min_dim_size_to_factor=2, decay_rate=0.7),
        lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=2, decay_rate=0.7),
    ),
    "unfactored": (
        lambda: aj.scale_by_factored_rms(factored=False),
        lambda: optax.scale_by_factored_rms(factored=False),
    ),
    "clip_by_block_rms": (lambda: aj.clip_by_block_rms(2.0), lambda: optax.clip_by_block_rms(2.0)),
    "param_block_rms": (aj.scale_by_param_block_rms, optax.scale_by_param_block_rms),
    "adafactor_momentum_decay": (
        lambda: aj.adafactor(0.1, 3, momentum=0.5, weight_decay_rate=0.01),
        lambda: optax.adafactor(0.1, 3, momentum=0.5, weight_decay_rate=0.01),
    ),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_matches_optax_on_a_3d_leaf(name):
    """optax factors the two largest axes of a 3-D leaf (here axes 0 and 2)."""
    ours, ref = BLOCKS[name]
    got, _ = _run(ours())
    want, _ = _run(ref(), standard=True)
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_torch_convention_factors_the_last_two_axes():
    """torch.optim.Adafactor on a (4, 3, 5) leaf: row and column moments over the last two
    axes, the estimate divided by the mean of the row moments (first step: rho = 0)."""
    tx = aj.scale_by_factored_rms(min_dim_size_to_factor=0, epsilon=None,
                                  factor_last_two_dims=True, eps_in_moment=False)
    g = {"t": _grads(0)["t"]}
    state = tx.init(g)
    assert state.v_row["t"].shape == (4, 3) and state.v_col["t"].shape == (4, 5)
    u, state = tx.update(g, state)
    x = np.asarray(g["t"], np.float64)
    row = np.mean(x**2, axis=-1, keepdims=True)  # torch's row_var, (4, 3, 1)
    col = np.mean(x**2, axis=-2, keepdims=True)  # torch's col_var, (4, 1, 5)
    var = row @ col / np.mean(row, axis=-2, keepdims=True)
    np.testing.assert_allclose(u["t"], x / np.sqrt(var), rtol=1e-5)
    optax_layout = aj.scale_by_factored_rms(min_dim_size_to_factor=0).init(g)
    assert optax_layout.v_row["t"].shape == (4, 3) and optax_layout.v_col["t"].shape == (3, 5)


def test_relative_step_and_hyperparams():
    tx = aj.scale_by_relative_step(0.3)
    state, used = tx.init(None), []
    for _ in range(16):
        u, state = tx.update({"w": jnp.ones(1)}, state)
        used.append(float(u["w"][0]))
        assert float(aj.get_hyperparams(state)["learning_rate"]) == pytest.approx(used[-1])
    np.testing.assert_allclose(used, np.minimum(0.3, 1 / np.sqrt(np.arange(1, 17))), rtol=1e-6)
    state = aj.set_hyperparams(state, learning_rate=0.01)
    assert float(tx.update({"w": jnp.ones(1)}, state)[0]["w"][0]) == pytest.approx(0.01)


def test_decay_offset_beyond_the_count_is_clamped():
    """optax yields NaN while count < decay_offset (t <= 0); we clamp t at 1."""
    params, _ = _run(aj.adafactor(0.1, 2, decay_offset=10), steps=2)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params))


def _gpt2_small() -> dict:
    """GPT-2 small's parameter shapes (124M), as ShapeDtypeStructs (nothing allocated)."""
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    d, layers = 768, 12
    block = {
        "ln_1": {"g": s(d), "b": s(d)}, "ln_2": {"g": s(d), "b": s(d)},
        "attn": {"c_attn_w": s(d, 3 * d), "c_attn_b": s(3 * d),
                 "c_proj_w": s(d, d), "c_proj_b": s(d)},
        "mlp": {"c_fc_w": s(d, 4 * d), "c_fc_b": s(4 * d),
                "c_proj_w": s(4 * d, d), "c_proj_b": s(d)},
    }
    return {"wte": s(50257, d), "wpe": s(1024, d), "h": [block] * layers,
            "ln_f": {"g": s(d), "b": s(d)}}


def state_bytes_on_gpt2_small() -> dict[str, int]:
    params = _gpt2_small()
    sizes = {"params": aj.state_bytes(params)}
    for name, tx in {
        "adam": aj.adam(1e-3),
        "adafactor": aj.adafactor(),
        "adafactor_momentum": aj.adafactor(momentum=0.9),
        "lamb": aj.lamb(1e-3),
    }.items():
        sizes[name] = aj.state_bytes(jax.eval_shape(tx.init, params))
    return sizes


def test_state_is_far_below_adams_on_gpt2_small_shapes():
    """Numbers recorded in benchmarks/RESULTS.md (Adafactor state)."""
    sizes = state_bytes_on_gpt2_small()
    assert sizes["params"] == 4 * 124_439_808
    assert sizes["adam"] > 2 * sizes["params"]
    assert sizes["adafactor"] < 0.002 * sizes["adam"]  # only vectors keep a full moment
    assert sizes["adafactor_momentum"] < 0.51 * sizes["adam"]


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: aj.adafactor(clipping_threshold=0.5), "clipping_threshold"),
        (lambda: aj.adafactor(decay_rate=-0.8), "decay_rate"),
        (lambda: aj.adafactor(momentum=1.0), "momentum"),
        (lambda: aj.adafactor(eps=-1.0), "epsilon"),
        (lambda: aj.adafactor(min_dim_size_to_factor=-1), "min_dim_size_to_factor"),
        (lambda: aj.adafactor(decay_offset=1.5), "step_offset"),
        (lambda: aj.adafactor(weight_decay_rate=0.1, lr_in_weight_decay=True), "learning_rate"),
        (lambda: aj.adafactor(learning_rate=-1.0), "learning_rate"),
        (lambda: aj.adafactor(factored="False"), "factored"),
        (lambda: aj.adafactor(convention="flax"), "convention"),
    ],
)
def test_bad_arguments_are_named(build, name):
    with pytest.raises(ValueError, match=name):
        build()


LIBRARY = {
    "lamb": lambda: aj.lamb(1e-2, weight_decay=0.1, convention="keras"),
    "lars": lambda: aj.lars(0.5, 1e-3, trust_coefficient=0.02, nesterov=True),
    "adafactor_torch": lambda: aj.adafactor(0.05, 2, weight_decay_rate=0.1, convention="torch"),
    "adafactor_keras": lambda: aj.adafactor(0.05, 2, weight_decay_rate=0.1, convention="keras"),
}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_works_with_the_library_wrappers(name):
    """make_step (donated), partition, skip_non_finite and accumulate_gradients."""
    tx, params, grads = LIBRARY[name](), _tree(), _grads(1)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    want = aj.apply_updates(params, u)
    got, state = aj.make_step(tx)(_tree(), tx.init(_tree()), grads)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)

    part = aj.partition({"a": tx, "s": aj.sgd(0.0)}, lambda p: {k: "s" if k == "b" else "a"
                                                                 for k in p})
    u, _ = jax.jit(part.update)(grads, part.init(params), params)
    np.testing.assert_array_equal(u["b"], 0.0 * grads["b"])
    np.testing.assert_allclose(aj.apply_updates(params, u)["w"], want["w"], rtol=1e-5, atol=1e-6)

    guarded = aj.skip_non_finite(tx)
    s0, update = guarded.init(params), jax.jit(guarded.update)
    bad = {**grads, "w": grads["w"].at[0, 0].set(jnp.nan)}
    u, s1 = update(bad, s0, params)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u))
    u, _ = update(grads, s1, params)
    np.testing.assert_allclose(aj.apply_updates(params, u)["w"], want["w"], rtol=1e-5, atol=1e-6)

    acc = aj.accumulate_gradients(tx, 2)
    s, update = acc.init(params), jax.jit(acc.update)
    half = jax.tree.map(lambda g: 0.5 * g, grads)
    _, s = update(jax.tree.map(lambda g: 1.5 * g, grads), s, params)
    u, _ = update(half, s, params)
    np.testing.assert_allclose(aj.apply_updates(params, u)["w"], want["w"], rtol=1e-5, atol=1e-6)
