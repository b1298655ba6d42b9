"""Native Adam steps with small state (8-bit block-wise, bfloat16 moments) against the XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax import _native
from accel_jax.fused import has_kernel_step

TARGET = "accel_jax_adam8_f32"


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(40, 129)), jnp.float32),  # 21 blocks, the last partial
        "b": jnp.asarray(rng.normal(size=(9,)), jnp.float32),  # small: plain moments, XLA path
        "h": jnp.asarray(rng.normal(size=(4096,)), jnp.bfloat16),  # bf16: XLA path
    }


def _grads(seed, params):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _run(tx, kernel, steps=4):
    params = _params()
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=kernel))
    if kernel:
        assert TARGET in step.lower(params, state, params).as_text()
    for i in range(steps):
        params, state = step(params, state, _grads(i, params))
    return params, state


@pytest.mark.parametrize("tx", [aj.adam(1e-2, state_bits=8),
                                aj.adamw(1e-2, weight_decay=0.1, state_bits=8)],
                         ids=["adam", "adamw"])
def test_kernel_matches_the_xla_path(tx, native_kernels):
    (p1, s1), (p2, s2) = _run(tx, True), _run(tx, False)
    # The rounding hashes position and step, not the value's last bits: the codes agree.
    for moment in ("mu", "nu"):
        q1, q2 = getattr(s1[0], moment)["w"], getattr(s2[0], moment)["w"]
        codes1, codes2 = np.asarray(q1.codes).astype(int), np.asarray(q2.codes).astype(int)
        assert np.mean(codes1 == codes2) > 0.999 and np.abs(codes1 - codes2).max() <= 1
        np.testing.assert_allclose(q1.scale, q2.scale, rtol=1e-5)
    np.testing.assert_allclose(p1["w"], p2["w"], rtol=1e-6, atol=1e-6)
    for name in ("b", "h"):  # the same XLA computation in both steps
        np.testing.assert_array_equal(p1[name], p2[name])
    jax.tree.map(np.testing.assert_array_equal, s1[0].nu["b"], s2[0].nu["b"])


def test_reference_transcription_matches_the_kernel(native_kernels):
    """reference_leaves (the kernel's JVP) is the kernel in jax.numpy."""
    tx = aj.adam(1e-2, state_bits=8)
    params, state = _run(tx, False, steps=2)
    w = params["w"]
    mu, nu = state[0].mu["w"], state[0].nu["w"]
    count = jax.lax.bitcast_convert_type(jnp.int32(3), jnp.float32)
    scalars = jnp.asarray([0.9, 0.1, 0.999, 0.001, 0.271, 0.002997, 0, 1e-8, -1e-2], jnp.float32)
    scalars = jnp.concatenate([scalars, count[None]])
    args = (scalars, jnp.zeros(1, jnp.float32), [w], [w * 0.5],
            [[mu.codes], [mu.scale], [nu.codes], [nu.scale]])
    ours = jax.jit(lambda *a: _native.native_leaves(TARGET, None, *a))(*args)
    ref = jax.jit(lambda *a: _native.reference_leaves(TARGET, None, *a))(*args)
    np.testing.assert_allclose(ours[0][0], ref[0][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(ours[1], ref[1], strict=True):
        if a[0].dtype == jnp.uint8:
            assert np.mean(np.asarray(a[0]) == np.asarray(b[0])) > 0.999
        else:
            np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
    # Differentiable: the JVP is the transcription's.
    def step(p):
        return _native.native_leaves(TARGET, None, scalars, args[1], [p], *args[3:])[0]

    tangent = jax.jvp(step, (w,), (jnp.ones_like(w),))[1][0]
    np.testing.assert_allclose(tangent, jnp.ones_like(w), rtol=1e-6)


def test_the_kernel_stays_in_use_inside_wrappers(native_kernels):
    inner = aj.adamw(1e-2, weight_decay=0.1, state_bits=8)
    for tx in (aj.skip_non_finite(inner), aj.accumulate_gradients(inner, 2)):
        assert has_kernel_step(tx)
    tx = aj.skip_non_finite(inner)
    params = _params()
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    assert TARGET in step.lower(params, state, params).as_text()
    ours = step(params, state, _grads(0, params))[0]
    plain = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))(
        params, state, _grads(0, params))[0]
    np.testing.assert_allclose(ours["w"], plain["w"], rtol=1e-6, atol=1e-6)


def test_digits_quality_with_the_kernel_within_half_a_percent(native_kernels):
    """The kernel leaves 8-bit Adam's quality as the XLA path's (final loss within 0.5%).

    (Against float32 state the final loss moves by up to 2% either way from one data
    order to the next; test_quantized.py checks 5%, benchmarks/RESULTS.md the seeds.)
    """
    from benchmarks.quality import train_digits

    tx = aj.adam(1e-3, state_bits=8)
    ours, _ = train_digits(tx, kernel=True)
    xla, _ = train_digits(tx, kernel=False)
    assert abs(ours / xla - 1) <= 0.005, (ours, xla)


def test_bf16_moments_kernel_matches_the_xla_path(native_kernels):
    tx = aj.adamw(1e-2, weight_decay=0.1, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    params = {"w": _params()["w"], "b": _params()["b"]}
    results = []
    for kernel in (True, False):
        p, state = params, tx.init(params)
        step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=kernel))  # noqa: B023
        if kernel:
            assert "accel_jax_adam_bf16" in step.lower(p, state, p).as_text()
        for i in range(4):
            p, state = step(p, state, _grads(i, p))
        results.append((p, state[0].mu, state[0].nu))
    (p1, mu1, nu1), (p2, mu2, nu2) = results
    assert mu1["w"].dtype == jnp.bfloat16 and nu1["w"].dtype == jnp.bfloat16
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), p1, p2)
    # Rounded to bfloat16 from float32 values equal to float32 rounding: at most one
    # bfloat16 step apart, and rarely that.
    for a, b in ((mu1, mu2), (nu1, nu2)):
        a, b = np.asarray(a["w"], np.float32), np.asarray(b["w"], np.float32)
        np.testing.assert_allclose(a, b, rtol=2**-7)
        assert np.mean(a == b) > 0.999
