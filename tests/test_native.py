"""The native single-pass CPU kernel of Adam/AdamW agrees with the XLA path and stays safe.

The XLA path is the reference (itself checked against optax, torch and Keras in
test_conformance.py); the kernel reorders nothing but XLA contracts some
multiply-adds into FMAs, so values agree to float32 rounding (rtol 1e-6), not bit
for bit.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax import _native
from tests.problems import layer_like_params, random_grads

KERNEL = "accel_jax_adam_f32"

# Without a C++ compiler these skip, with the reason (test_native_trust.py tests that
# path); with one, a failed build fails them (conftest.py's native_kernels).
pytestmark = pytest.mark.usefixtures("native_kernels")

CONFIGS = {
    "adam": lambda: aj.adam(1e-2),
    "adam_torch": lambda: aj.adam(1e-2, convention="torch"),
    "adam_keras": lambda: aj.adam(1e-2, convention="keras"),
    "adam_eps_root": lambda: aj.adam(1e-2, eps=1e-6, eps_root=1e-8),
    "adam_schedules": lambda: aj.adam(
        aj.warmup(aj.cosine_decay(1e-2, 12), 3), b1=aj.linear_schedule(0.8, 0.95, 10)
    ),
    "adamw": lambda: aj.adamw(1e-2, weight_decay=0.1),
    "adamw_torch": lambda: aj.adamw(1e-2, convention="torch"),
    "adamw_mask_fn": lambda: aj.adamw(
        1e-2, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "adamw_mask_prefix": lambda: aj.adamw(
        1e-2, weight_decay=0.1, mask={"dense": True, "emb": False, "scale": False}
    ),
    "sgd_momentum": lambda: aj.sgd(1e-2, momentum=0.9),
    "sgd_nesterov": lambda: aj.sgd(1e-2, momentum=0.9, nesterov=True),
    "sgd_nesterov_keras": lambda: aj.sgd(1e-2, momentum=0.9, nesterov=True, convention="keras"),
    "sgd_momentum_schedule": lambda: aj.sgd(
        aj.exponential_decay(1e-2, 5, 0.5), momentum=aj.linear_schedule(0.5, 0.9, 8)
    ),
    "rmsprop": lambda: aj.rmsprop(1e-2),
    "rmsprop_torch": lambda: aj.rmsprop(1e-2, convention="torch"),
    "rmsprop_keras": lambda: aj.rmsprop(1e-2, convention="keras"),
}


_params = layer_like_params
_grads = random_grads


def _run(tx, kernel, params=None, steps=12, scale=1.0):
    params = _params() if params is None else params
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=kernel))
    for i in range(steps):
        params, state = step(params, state, _grads(params, i, scale))
    return params, state


def _assert_close(a, b):
    """Leafwise: rtol 1e-6, and an atol of 1e-6 x the leaf's largest value (near-zero entries)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(y)) or 1.0))


def _uses_kernel(fn, *args) -> bool:
    return KERNEL in jax.jit(fn).lower(*args).as_text()


def test_the_kernels_build_on_this_machine():
    assert aj.native_available(), aj.native_status()
    assert "built and registered" in aj.native_status()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kernel_step_matches_the_xla_path(name):
    tx = CONFIGS[name]()
    # Small gradients make eps matter, so its placement (convention) is checked too.
    for scale in (1.0, 1e-5):
        _assert_close(_run(tx, True, scale=scale), _run(tx, False, scale=scale))


def test_the_tolerance_tells_conventions_apart():
    """The comparison above can fail: eps placed as Keras does is far outside it."""
    small = 1e-6
    keras = _run(aj.adam(1e-2, eps=1e-7, convention="keras"), True, scale=small)[0]
    optax_like = _run(aj.adam(1e-2, eps=1e-7), False, scale=small)[0]
    with pytest.raises(AssertionError):
        _assert_close(keras, optax_like)


def _numpy_adam(s, leaf, p, g, m, v):
    m = s[0] * m + s[1] * g
    v = s[2] * v + s[3] * g * g
    return p + ((m / s[4]) / (np.sqrt(v / s[5] + s[6]) + s[7]) + leaf * p) * s[8], [m, v]


def _numpy_momentum(s, leaf, p, g, t):
    h = g * s[1]
    t = s[0] * t + h
    return p + (h + s[0] * t if s[3] else t) * s[2], [t]


def _numpy_rms(s, leaf, p, g, v):
    v = s[0] * v + s[1] * g * g
    return p + g / (np.sqrt(v + s[2]) + s[3]) * s[4], [v]


NUMPY_KERNELS = {
    "accel_jax_adam_f32": (_numpy_adam, [0.9, 0.1, 0.999, 0.001, 0.19, 0.002, 1e-9, 1e-8, -1e-2]),
    "accel_jax_momentum_f32": (_numpy_momentum, [0.9, 1.0, -1e-2, 1.0]),
    "accel_jax_momentum_f32 keras": (_numpy_momentum, [0.9, -1e-2, 1.0, 0.0]),
    "accel_jax_rms_f32": (_numpy_rms, [0.9, 0.1, 0.0, 1e-8, -1e-2]),
}


@pytest.mark.parametrize("name", sorted(NUMPY_KERNELS))
def test_each_kernel_matches_its_numpy_formula(name):
    """The kernels against the per-element formulas of cpu_kernels.cc, in float64 NumPy."""
    target = name.split()[0]
    formula, scalars = NUMPY_KERNELS[name]
    rng = np.random.default_rng(0)
    shapes = [(1000,), (7, 3), (), (70_000,)]  # the last spans two units of work
    n_slots = 2 if "adam" in target else 1
    p, g = ([rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(2))
    slots = [[np.abs(rng.standard_normal(s)).astype(np.float32) for s in shapes]
             for _ in range(n_slots)]
    scalars = np.asarray(scalars, np.float32)
    leaf = np.array([0.1, 0.0, 0.3, 0.2], np.float32)
    s64 = scalars.astype(np.float64)
    # The kernel, and its jax.numpy transcription (the JVP of the kernel step).
    for fn in (_native.native_leaves, _native.reference_leaves):
        got_p, got_slots = jax.jit(fn, static_argnums=(0, 1))(
            target, None, scalars, leaf, p, g, slots)
        for i in range(len(shapes)):
            args = [x[i].astype(np.float64) for x in (p, g, *slots)]
            want_p, want_slots = formula(s64, np.float64(leaf[i]), *args)
            for got, want in zip([got_p[i], *(c[i] for c in got_slots)], [want_p, *want_slots],
                                 strict=True):
                # f32 against f64 with O(1) inputs: a few float32 ulps of 1.
                np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-6)


def test_mixed_trees_take_the_kernel_for_float32_leaves_only():
    params = {
        "w": jnp.linspace(-1.0, 1.0, 300),
        "half": jnp.linspace(-1.0, 1.0, 50).astype(jnp.bfloat16),
        "steps": jnp.arange(4),
        "none": None,
    }
    tx = aj.adamw(1e-2, weight_decay=0.1)
    got = _run(tx, True, params=params, steps=6)
    want = _run(tx, False, params=params, steps=6)
    _assert_close(got[0]["w"], want[0]["w"])
    # Leaves the kernel does not take are the XLA path's, bit for bit.
    np.testing.assert_array_equal(got[0]["half"], want[0]["half"])
    np.testing.assert_array_equal(got[0]["steps"], want[0]["steps"])
    assert got[0]["none"] is None
    _assert_close(got[1], want[1])


def test_kernel_true_explains_why_it_cannot_run():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}
    sgd = aj.sgd(0.1)
    with pytest.raises(ValueError, match="no native kernel"):
        aj.apply_step(sgd, params, sgd.init(params), grads, kernel=True)
    for other in (aj.adam(0.1, amsgrad=True), aj.rmsprop(0.1, centered=True)):
        with pytest.raises(ValueError, match="no native kernel"):
            aj.apply_step(other, params, other.init(params), grads, kernel=True)
    tx = aj.adam(0.1)
    half = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match="no leaf qualifies"):
        aj.apply_step(tx, half, tx.init(half), half, kernel=True)
    with pytest.raises(ValueError, match="kernel must be None, True or False, got 'yes'"):
        aj.apply_step(tx, params, tx.init(params), grads, kernel="yes")


def test_kernel_step_still_rejects_a_mismatched_tree():
    tx = aj.adam(0.1)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="w"):
        aj.apply_step(tx, params, tx.init(params), {"w": jnp.ones(4)}, kernel=True)


def test_default_uses_the_kernel_only_where_nothing_can_be_sharded():
    tx = aj.adam(0.1)
    params = {"w": jnp.ones(3)}
    args = (params, tx.init(params), params)
    assert _uses_kernel(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True), *args)
    assert not _uses_kernel(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False), *args)
    # The tests run with 8 CPU devices: params could be sharded, so the default is XLA.
    assert jax.device_count() == 8
    assert not _uses_kernel(lambda p, s, g: aj.apply_step(tx, p, s, g), *args)


def test_default_uses_the_kernel_on_a_single_cpu_device():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, accel_jax as aj
        tx = aj.adamw(0.1)
        p = {"w": jnp.ones(3)}
        text = jax.jit(aj.make_step(tx)).lower(p, tx.init(p), p).as_text()
        print(jax.device_count(), "accel_jax_adam_f32" in text)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "True"]


def test_kernel_path_compiles_to_no_per_leaf_kernels():
    """The chain's per-leaf XLA work is dead code once the kernel computes those leaves."""
    tx = aj.adam(0.1)
    params = {f"p{i}": jnp.ones(100) for i in range(40)}
    state = tx.init(params)
    step = aj.make_step(tx, kernel=True)
    text = step.lower(params, state, params).compile().as_text()
    assert text.count(f'custom_call_target="{KERNEL}"') == 2  # 40 leaves in calls of 32
    assert text.count("fusion(") < 10  # the scalars only; the XLA path has 3 per leaf


def test_make_step_kernel_donates_and_updates_in_place():
    tx = aj.adamw(1e-2)
    params = _params()
    state = tx.init(params)
    want = aj.apply_step(tx, params, state, _grads(params, 0), kernel=False)
    params2 = jax.tree.map(jnp.copy, params)
    state2 = jax.tree.map(jnp.copy, state)
    step = aj.make_step(tx, kernel=True)
    got = step(params2, state2, _grads(params, 0))
    assert params2["emb"].is_deleted() and state2[0].mu["emb"].is_deleted()
    _assert_close(got, want)


def test_kernel_step_compiles_once():
    traces = []
    tx = aj.adam(1e-2)

    def step(p, s, g):
        traces.append(1)
        return aj.apply_step(tx, p, s, g, kernel=True)

    jitted = jax.jit(step)
    params = _params()
    state = tx.init(params)
    for i in range(3):
        params, state = jitted(params, state, _grads(params, i))
    assert len(traces) == 1


@pytest.mark.parametrize("name", ["adamw_mask_fn", "sgd_nesterov_keras", "rmsprop_torch"])
def test_kernel_step_is_differentiable(name):
    """Its JVP is the XLA formula's: gradients through the step equal the XLA path's."""
    tx = CONFIGS[name]()
    # After a few steps: at the first step m/sqrt(v) = sign(g), whose derivative is 0.
    params, state = _run(tx, False, steps=3)

    def loss(grads, kernel):
        new, _ = aj.apply_step(tx, params, state, grads, kernel=kernel)
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(new))

    grads = _grads(params, 0)
    _assert_close(jax.grad(loss)(grads, True), jax.grad(loss)(grads, False))


def test_kernel_step_under_vmap():
    tx = aj.adam(1e-2)
    params = {"w": jnp.stack([jnp.linspace(-1.0, 1.0, 64) * k for k in (1.0, 2.0, 3.0)])}
    grads = {"w": jnp.cos(params["w"])}
    state = jax.vmap(tx.init)(params)

    def step(kernel):
        return jax.vmap(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=kernel))(
            params, state, grads
        )

    _assert_close(step(True), step(False))


def test_kernel_step_under_pmap_equals_one_device():
    tx = aj.adam(1e-2)
    n = jax.device_count()
    params = {"w": jnp.linspace(-1.0, 1.0, 128)}
    grads = {"w": jnp.cos(params["w"] * 3)}
    state = tx.init(params)
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * n), tree)  # noqa: E731
    step = jax.pmap(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    p_all, _ = step(replicate(params), replicate(state), replicate(grads))
    p_one, _ = aj.apply_step(tx, params, state, grads, kernel=False)
    for d in range(n):
        _assert_close(p_all["w"][d], p_one["w"])
