"""Flat params outside jit: linear in the leaves, and the same arrays as inside jit."""

import jax
import jax.numpy as jnp
import numpy as np

import accel_jax as aj
from accel_jax import _flat


def _params(n=300):
    rng = np.random.default_rng(0)
    shapes = [(3, 5), (7,), (2, 2, 2)]
    tree = {f"l{i:03d}": jnp.asarray(rng.normal(size=shapes[i % 3]), jnp.float32)
            for i in range(n)}
    tree["half"] = [jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16) for _ in range(3)]
    tree["count"] = jnp.arange(3)
    tree["scalar"] = 2.5
    return tree


def test_eager_flatten_and_unflatten_equal_the_traced_ones():
    params = _params()
    flat, layout = aj.flatten_params(params)
    traced_flat = jax.jit(layout.flatten)(params)
    jax.tree.map(np.testing.assert_array_equal, flat, traced_flat)
    assert flat["float32"].shape == (100 * (15 + 7 + 8) + 1,) and flat["bfloat16"].shape == (12,)
    eager = layout.unflatten(flat)
    traced = jax.jit(layout.unflatten)(flat)
    jax.tree.map(np.testing.assert_array_equal, eager, traced)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, jnp.asarray(b)), eager, params)
    assert eager["half"][0].dtype == jnp.bfloat16 and eager["l001"].shape == (7,)


def test_one_compile_per_distinct_leaf_shape():
    """Eager unflatten compiles one small slice per (size, shape), whatever the leaf count."""
    _flat._take.clear_cache()
    layout = aj.flatten_params(_params())[1]
    layout.unflatten(aj.flatten_params(_params())[0])
    assert _flat._take._cache_size() <= 5  # 3 float32 shapes, 1 bf16 (+1 for the scalar)


def test_concatenation_off_the_host_path():
    """Leaves on several devices (or not on the CPU): in-place updates of a donated buffer."""
    devices = jax.devices()
    leaves = [jax.device_put(jnp.full((2, 3), i, jnp.float32), devices[i % len(devices)])
              for i in range(4)]
    if len(devices) > 1:
        assert _flat._one_cpu_device(leaves) is None
    buffer = _flat.concatenate(leaves, 24, "float32")
    np.testing.assert_array_equal(buffer, np.repeat(np.arange(4.0), 6))
