"""Smaller optimizer state: 8-bit block-wise Adam moments and bfloat16 moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax.transforms.quantized import dequantize, quantize


def _big_params():
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "kernel": jax.random.normal(k[0], (128, 96)),  # 12,288 values: quantized
        "odd": jax.random.normal(k[1], (5001,)),  # not a multiple of the block size
        "bias": jnp.zeros(96),  # small: stays float32
    }


# ---------------------------------------------------------------------------- encoding


def test_quantize_round_trip_relative_error():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 1000)) * jnp.logspace(-2, 2, 1000)
    q = quantize(x, 256)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (12, 256)
    assert q.scale.dtype == jnp.float32 and q.scale.shape == (12,)
    y = dequantize(q, x.shape)
    assert y.shape == x.shape and y.dtype == jnp.float32
    blocks = jnp.pad(x.reshape(-1), (0, 72)).reshape(12, 256)
    block_max = jnp.repeat(jnp.max(jnp.abs(blocks), axis=1), 256)[: x.size].reshape(x.shape)
    # 3 mantissa bits: within 1/16 relative, for values above 1/1000 of their block maximum.
    big = jnp.abs(x) > 1e-3 * block_max
    rel = jnp.abs(y - x) / jnp.abs(x)
    assert float(jnp.max(jnp.where(big, rel, 0.0))) <= 1 / 16 + 1e-6
    # The block maximum is exact, and zeros stay zeros.
    np.testing.assert_allclose(jnp.max(jnp.abs(y)), jnp.max(jnp.abs(x)), rtol=1e-6)
    np.testing.assert_array_equal(dequantize(quantize(jnp.zeros(700)), (700,)), jnp.zeros(700))


@pytest.mark.parametrize("field", [0, 1])
def test_stochastic_rounding_is_unbiased(field):
    x = jax.random.normal(jax.random.PRNGKey(2), (64, 256))
    # Rows 48-63: below 2**-6 / 448 of their block's maximum (1.0): the subnormal codes.
    x = x.at[48:].multiply(1e-5).at[48:, 0].set(1.0)
    f = jax.jit(lambda x, s: dequantize(quantize(x, 256, salt=s, field=field), x.shape))
    mean = sum(f(x, jnp.int32(s)) for s in range(400)) / 400
    # Deterministic rounding errs by up to 1/16; the average of stochastic roundings
    # converges to x (a biased rounding would show up here as a mean ratio != 1).
    def bias(x, mean):  # the mean error away from zero, relative to the mean magnitude
        return float(jnp.sum((mean - x) * jnp.sign(x)) / jnp.sum(jnp.abs(x)))

    assert abs(float(jnp.mean(mean[:48] / x[:48])) - 1) < 2e-4
    assert abs(bias(x[:48], mean[:48])) < 2e-4
    # Subnormal codes (about 2 code steps per value): rounding to nearest biases these
    # values by -0.3% of their size (toward zero), stochastic rounding by about 0.01%.
    assert abs(bias(x[48:, 1:], mean[48:, 1:])) < 1e-3


def test_the_two_rounding_thresholds_are_independent():
    """m and sqrt(v) round with the high and the low 16 bits of one hash per value."""
    # One binade (y in [307, 448]): every value has the same code step.
    x = jax.random.uniform(jax.random.PRNGKey(3), (64, 256), minval=1.2, maxval=1.75)
    x = x.at[:, 0].set(1.75)

    def residual(salt, field):
        y = dequantize(quantize(x, 256, salt=jnp.int32(salt), field=field), x.shape)
        return np.asarray(y - x)[:, 1:].ravel()

    # 16,320 values: the correlation of independent roundings is 0 +- 0.008.
    for a, b in [((7, 0), (7, 1)), ((7, 0), (8, 0)), ((7, 1), (8, 1)), ((7, 0), (8, 1))]:
        assert abs(np.corrcoef(residual(*a), residual(*b))[0, 1]) < 0.04, (a, b)


# ------------------------------------------------------------------------- optimizer


def test_state_bytes_are_at_most_0_3x_of_float32():
    params = {"w": jnp.zeros((1024, 768)), "b": jnp.zeros(768)}
    fp32 = aj.state_bytes(aj.adam(1e-3).init(params))
    eight = aj.state_bytes(aj.adam(1e-3, state_bits=8).init(params))
    assert eight <= 0.3 * fp32, (eight, fp32)


def test_state_layout_small_int_and_none_leaves():
    params = {**_big_params(), "count": jnp.arange(3), "none": None}
    state = aj.adam(1e-3, state_bits=8).init(params)[0]
    assert isinstance(state, aj.ScaleByAdam8bitState)
    for moments in (state.mu, state.nu):
        assert isinstance(moments["kernel"], aj.QuantizedArray)
        assert moments["kernel"].codes.dtype == jnp.uint8
        assert moments["odd"].codes.shape == (20, 256)  # 5001 values, padded to 20 blocks
        assert moments["bias"].dtype == jnp.float32 and moments["bias"].shape == (96,)
        assert moments["count"].dtype == params["count"].dtype
        assert moments["none"] is None
    grads = {
        **jax.tree.map(jnp.ones_like, _big_params()),
        "count": np.zeros(3, jax.dtypes.float0),
        "none": None,
    }
    tx = aj.adam(1e-3, state_bits=8)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert updates["none"] is None and updates["count"].dtype == jax.dtypes.float0
    new = aj.apply_updates(params, updates)
    np.testing.assert_array_equal(new["count"], params["count"])


def test_first_step_matches_float32_adam():
    """The zero state is encoded exactly, so step 1 is Adam's step 1 in float32."""
    params = _big_params()
    grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                         params)
    for make in (aj.adam, aj.adamw):
        want, _ = make(1e-2).update(grads, make(1e-2).init(params), params)
        tx = make(1e-2, state_bits=8)
        got, _ = tx.update(grads, tx.init(params), params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_trajectory_stays_close_to_float32_adam():
    params = {"w": jax.random.normal(jax.random.PRNGKey(3), (64, 128))}
    target = jax.random.normal(jax.random.PRNGKey(4), (64, 128))
    loss = lambda p: jnp.mean((p["w"] - target) ** 2)

    def run(tx):
        p, s = params, tx.init(params)
        step = jax.jit(lambda p, s: aj.apply_step(tx, p, s, jax.grad(loss)(p)))
        for _ in range(200):
            p, s = step(p, s)
        return float(loss(p))

    fp32, eight = run(aj.adam(1e-2)), run(aj.adam(1e-2, state_bits=8))
    assert abs(eight / fp32 - 1) < 0.05, (fp32, eight)


def test_bf16_params_and_jit_with_donation():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _big_params())
    tx = aj.adam(1e-3, state_bits=8)
    step = aj.make_step(tx)
    state = tx.init(params)
    assert state[0].mu["bias"].dtype == jnp.bfloat16
    for _ in range(2):
        params, state = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    assert int(state[0].count) == 2
    hp = aj.get_hyperparams(state)
    assert float(hp["b1"]) == pytest.approx(0.9) and float(hp["learning_rate"]) == pytest.approx(
        1e-3
    )


def test_structure_mismatch_names_the_path():
    tx = aj.adam(1e-3, state_bits=8)
    state = tx.init(_big_params())
    with pytest.raises(ValueError, match="kernel|odd|bias"):
        tx.update({"kernel": jnp.ones((128, 96))}, state, _big_params())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"state_bits": 16}, "state_bits"),
        ({"state_bits": 8, "amsgrad": True}, "amsgrad"),
        ({"state_bits": 8, "mu_dtype": jnp.bfloat16}, "mu_dtype"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aj.adam(1e-3, **kwargs)
    with pytest.raises(ValueError, match=match):
        aj.adamw(1e-3, **kwargs)


def test_block_size_is_validated():
    with pytest.raises(ValueError, match="block_size"):
        aj.scale_by_adam_8bit(block_size=0)


# ------------------------------------------------------------------- bfloat16 moments


def test_bf16_moments_are_stored_bf16_and_computed_in_f32():
    params = {"w": jnp.linspace(-1.0, 1.0, 300)}
    grads = {"w": jnp.cos(jnp.linspace(0.0, 9.0, 300)) * 1e-3}
    tx = aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    state = tx.init(params)
    assert state[0].mu["w"].dtype == jnp.bfloat16 and state[0].nu["w"].dtype == jnp.bfloat16
    updates, state = tx.update(grads, state, params)
    updates, state = tx.update(grads, state, params)
    assert updates["w"].dtype == jnp.float32
    assert state[0].mu["w"].dtype == jnp.bfloat16 and state[0].nu["w"].dtype == jnp.bfloat16
    # Reference: float32 formulas; each new moment is stored (rounded to) bf16 and
    # the direction is computed in float32 from the stored values.
    g = grads["w"]
    bf16 = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
    b1, b2 = jnp.float32(0.9), jnp.float32(0.999)
    m1, v1 = bf16((1 - b1) * g), bf16((1 - b2) * (g * g))
    m2, v2 = bf16(b1 * m1 + (1 - b1) * g), bf16(b2 * v1 + (1 - b2) * (g * g))
    want = -1e-2 * (m2 / (1 - b1**2)) / (jnp.sqrt(v2 / (1 - b2**2)) + 1e-8)
    np.testing.assert_allclose(updates["w"], want, rtol=1e-5)


# ------------------------------------------------------------------ training quality


@pytest.mark.slow
def test_digits_final_loss_within_5_percent_of_float32_state(standard_promotion):
    from benchmarks.quality import state_formats, train_digits

    results = {name: train_digits(tx, steps=500) for name, tx in state_formats().items()}
    fp32_loss, fp32_bytes = results["float32"]
    for name in ("bfloat16 moments", "8-bit block-wise"):
        loss, nbytes = results[name]
        assert abs(loss / fp32_loss - 1) <= 0.05, (name, loss, fp32_loss)
    assert results["8-bit block-wise"][1] <= 0.3 * fp32_bytes
    assert results["bfloat16 moments"][1] <= 0.51 * fp32_bytes


def test_a_small_leaf_with_the_wrong_shape_is_refused():
    """Small leaves keep plain moments: a (3,) gradient for a (2, 3) param was broadcast."""
    tx = aj.scale_by_adam_8bit()
    state = tx.init({"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"at path \['w'\] the update has shape \(3,\)"):
        tx.update({"w": jnp.ones(3)}, state)
    tx = aj.scale_by_adam_8bit(min_quantized_size=1, block_size=4)
    state = tx.init({"w": jnp.ones((2, 3))})  # quantized: 2 blocks of 4
    with pytest.raises(ValueError, match=r"at path \['w'\].*quantized moment holds 2 blocks"):
        tx.update({"w": jnp.ones(20)}, state)
