"""Building blocks of accel_jax.transforms.{momentum,adaptive,adam} against NumPy references.

Each reference is the update formula of the block's docstring, written in float64
NumPy; the blocks are run over a random gradient sequence (float64 at rtol 1e-12
and float32 at rtol 1e-5), for every switch they have.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import accel_jax as aj

STEPS = 30


def run(tx, grads: np.ndarray, dtype) -> np.ndarray:
    """Outputs of ``tx`` over the gradient sequence (one compiled scan)."""
    g = jnp.asarray(grads, dtype)
    state = tx.init(g[0])

    def body(s, gt):
        u, s = tx.update(gt, s)
        return s, u

    _, outs = jax.jit(lambda s, g: jax.lax.scan(body, s, g))(state, g)
    return np.asarray(outs, np.float64)


# ----------------------------------------------------------------- NumPy references


def ref_trace(grads, momentum, nesterov):
    v, out = np.zeros_like(grads[0]), []
    for g in grads:
        v = momentum * v + g
        out.append(g + momentum * v if nesterov else v)
    return np.array(out)


def ref_ema(grads, decay, debias):
    m, out = np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, 1):
        m = decay * m + (1 - decay) * g
        out.append(m / (1 - decay**t) if debias else m)
    return np.array(out)


def ref_adagrad(grads, init, eps, eps_in_sqrt):
    s, out = np.full_like(grads[0], init), []
    for g in grads:
        s = s + g * g
        out.append(g / (np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps))
    return np.array(out)


def ref_rms(grads, decay, eps, eps_in_sqrt, centered, initial_scale):
    v, m, out = np.full_like(grads[0], initial_scale), np.zeros_like(grads[0]), []
    for g in grads:
        v = decay * v + (1 - decay) * g * g
        m = decay * m + (1 - decay) * g
        var = v - m * m if centered else v
        out.append(g / (np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps))
    return np.array(out)


def ref_adam(grads, b1, b2, eps, eps_root, eps_hat, amsgrad, max_corrected):
    m, v, vmax = (np.zeros_like(grads[0]) for _ in range(3))
    out = []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        e = eps / np.sqrt(bc2) if eps_hat else eps
        v_hat = v / bc2
        if amsgrad:
            vmax = np.maximum(vmax, v_hat if max_corrected else v)
            v_hat = vmax if max_corrected else vmax / bc2
        out.append((m / bc1) / (np.sqrt(v_hat + eps_root) + e))
    return np.array(out)


def ref_adamax(grads, b1, b2, eps, eps_in_max):
    m, u, out = np.zeros_like(grads[0]), np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        if eps_in_max:
            u = np.maximum(b2 * u, np.abs(g) + eps)
            out.append(m / (1 - b1**t) / u)
        else:
            u = np.maximum(b2 * u, np.abs(g))
            out.append(m / (1 - b1**t) / (u + eps))
    return np.array(out)


def ref_nadam(grads, b1, b2, eps, psi):
    mu_at = (lambda t: b1) if psi is None else (lambda t: b1 * (1 - 0.5 * 0.96 ** (t * psi)))
    m, v, prod, out = np.zeros_like(grads[0]), np.zeros_like(grads[0]), 1.0, []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        prod = prod * mu_at(t)
        m_hat = mu_at(t + 1) * m / (1 - prod * mu_at(t + 1)) + (1 - mu_at(t)) * g / (1 - prod)
        out.append(m_hat / (np.sqrt(v / (1 - b2**t)) + eps))
    return np.array(out)


# ------------------------------------------------------------------------ cases

CASES = {
    "trace": (lambda: aj.trace(0.9), lambda g: ref_trace(g, 0.9, False)),
    "trace_nesterov": (lambda: aj.trace(0.8, nesterov=True), lambda g: ref_trace(g, 0.8, True)),
    "ema": (lambda: aj.ema(0.9), lambda g: ref_ema(g, 0.9, True)),
    "ema_biased": (lambda: aj.ema(0.7, debias=False), lambda g: ref_ema(g, 0.7, False)),
    "adagrad": (lambda: aj.scale_by_adagrad(0.1, 1e-7), lambda g: ref_adagrad(g, 0.1, 1e-7, True)),
    "adagrad_eps_out": (
        lambda: aj.scale_by_adagrad(0.0, 1e-10, eps_in_sqrt=False),
        lambda g: ref_adagrad(g, 0.0, 1e-10, False),
    ),
    "rms": (lambda: aj.scale_by_rms(0.9, 1e-8), lambda g: ref_rms(g, 0.9, 1e-8, True, False, 0.0)),
    "rms_eps_out_init": (
        lambda: aj.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False, initial_scale=1.0),
        lambda g: ref_rms(g, 0.99, 1e-8, False, False, 1.0),
    ),
    "stddev": (
        lambda: aj.scale_by_stddev(0.9, 1e-6),
        lambda g: ref_rms(g, 0.9, 1e-6, True, True, 0.0),
    ),
    "stddev_eps_out": (
        lambda: aj.scale_by_stddev(0.9, 1e-6, eps_in_sqrt=False),
        lambda g: ref_rms(g, 0.9, 1e-6, False, True, 0.0),
    ),
    "adam": (
        lambda: aj.scale_by_adam(0.9, 0.999, 1e-8),
        lambda g: ref_adam(g, 0.9, 0.999, 1e-8, 0.0, False, False, True),
    ),
    "adam_eps_hat_eps_root": (
        lambda: aj.scale_by_adam(0.8, 0.99, 1e-3, 1e-6, eps_before_bias_correction=True),
        lambda g: ref_adam(g, 0.8, 0.99, 1e-3, 1e-6, True, False, True),
    ),
    "amsgrad_corrected": (
        lambda: aj.scale_by_amsgrad(0.9, 0.99, 1e-8),
        lambda g: ref_adam(g, 0.9, 0.99, 1e-8, 0.0, False, True, True),
    ),
    "amsgrad_raw": (
        lambda: aj.scale_by_amsgrad(0.9, 0.99, 1e-8, max_of_bias_corrected=False),
        lambda g: ref_adam(g, 0.9, 0.99, 1e-8, 0.0, False, True, False),
    ),
    "adamax": (
        lambda: aj.scale_by_adamax(0.9, 0.999, 1e-8),
        lambda g: ref_adamax(g, 0.9, 0.999, 1e-8, True),
    ),
    "adamax_eps_out": (
        lambda: aj.scale_by_adamax(0.9, 0.999, 1e-7, eps_in_max=False),
        lambda g: ref_adamax(g, 0.9, 0.999, 1e-7, False),
    ),
    "nadam_constant": (
        lambda: aj.scale_by_nadam(0.9, 0.999, 1e-8),
        lambda g: ref_nadam(g, 0.9, 0.999, 1e-8, None),
    ),
    "nadam_torch": (
        lambda: aj.scale_by_nadam(0.9, 0.999, 1e-8, momentum_decay=0.004),
        lambda g: ref_nadam(g, 0.9, 0.999, 1e-8, 0.004),
    ),
    "nadam_keras": (
        lambda: aj.scale_by_nadam(0.9, 0.999, 1e-7, momentum_decay=1.0),
        lambda g: ref_nadam(g, 0.9, 0.999, 1e-7, 1.0),
    ),
}


def gradient_sequence(seed=0, n=7):
    rng = np.random.default_rng(seed)
    # varying scales so eps placements and maxima matter
    return rng.normal(size=(STEPS, n)) * np.exp(rng.normal(size=(STEPS, 1)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_matches_numpy_reference_float64(name, x64):
    make, ref = CASES[name]
    g = gradient_sequence()
    np.testing.assert_allclose(run(make(), g, jnp.float64), ref(g), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_matches_numpy_reference_float32(name):
    make, ref = CASES[name]
    g = gradient_sequence(seed=1)
    expected = ref(g.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(run(make(), g, jnp.float32), expected, rtol=1e-5, atol=1e-6)


F32_STATE_BLOCKS = {
    "adam": lambda **d: aj.scale_by_adam(**d),
    "adamax": lambda **d: aj.scale_by_adamax(**d),
    "nadam_torch": lambda **d: aj.scale_by_nadam(momentum_decay=0.004, **d),
    "amsgrad_raw": lambda **d: aj.scale_by_amsgrad(max_of_bias_corrected=False, **d),
    "stddev": lambda **d: aj.scale_by_stddev(**d),
}


@pytest.mark.parametrize("name", sorted(F32_STATE_BLOCKS))
def test_bf16_gradients_with_float32_moments(name):
    """bf16 in and out, float32 state: equal to the float32 computation rounded once."""
    make = F32_STATE_BLOCKS[name]
    block = make(mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    g16 = jnp.asarray(gradient_sequence(seed=2)[:5], jnp.bfloat16)
    state = block.init(g16[0])
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
    reference = make()
    ref_state = reference.init(g16[0].astype(jnp.float32))
    for g in g16:
        u, state = block.update(g, state)
        u32, ref_state = reference.update(g.astype(jnp.float32), ref_state)
        assert u.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(u), np.asarray(u32.astype(jnp.bfloat16)))


def test_scheduled_momentum_is_recorded_and_used():
    sched = lambda count: 0.5 + 0.1 * count.astype(jnp.float32)
    tx = aj.trace(sched)
    g = np.ones((3, 1))
    out = run(tx, g, jnp.float32)
    # v1 = 1, v2 = 0.6 * 1 + 1 = 1.6, v3 = 0.7 * 1.6 + 1 = 2.12
    np.testing.assert_allclose(out[:, 0], [1.0, 1.6, 2.12], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=6),
    st.floats(0.0, 0.99),
)
def test_rms_direction_is_bounded_property(values, decay):
    """|g / sqrt(v + eps)| <= 1 / sqrt(1 - decay) at the first step, for any gradient."""
    g = jnp.asarray(values, jnp.float32)
    tx = aj.scale_by_rms(decay, eps=1e-8)
    u, _ = tx.update(g, tx.init(g))
    assert np.all(np.isfinite(np.asarray(u)))
    assert float(jnp.max(jnp.abs(u))) <= 1.0 / np.sqrt(1.0 - decay) * (1 + 1e-5)


def test_adagrad_with_zero_eps_gives_zero_not_nan_for_untouched_coordinates():
    tx = aj.scale_by_adagrad(0.0, 0.0)
    g = jnp.array([0.0, 2.0])
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(u, [0.0, 1.0])
