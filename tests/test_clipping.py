"""Clipping by value, by global norm (also sharded over 8 devices), adaptive: against optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import accel_jax as aj


def _tree(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "vec": jnp.asarray(rng.normal(size=7) * scale, jnp.float32),
        "dense": jnp.asarray(rng.normal(size=(5, 4)) * scale, jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(4, 2, 3)) * scale, jnp.float32),
        "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)) * scale, jnp.float32),
        "scalar": jnp.asarray(rng.normal() * scale, jnp.float32),
    }


def _assert_trees_equal(a, b, rtol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if rtol:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _run(tx, updates, params=None):
    return jax.jit(tx.update)(updates, tx.init(params), params)[0]


def test_clip_matches_optax(standard_promotion):
    g = _tree(scale=2.0)
    _assert_trees_equal(_run(aj.clip(1.5), g), _run(optax.clip(1.5), g))


@pytest.mark.parametrize("max_norm", [1.0, 100.0])
def test_clip_by_global_norm_matches_optax(max_norm, standard_promotion):
    g = _tree()
    want = _run(optax.clip_by_global_norm(max_norm), g)
    _assert_trees_equal(_run(aj.clip_by_global_norm(max_norm), g), want)
    np.testing.assert_allclose(float(aj.global_norm(g)), float(optax.tree.norm(g)), rtol=1e-7)


def test_clipped_global_norm_is_max_norm():
    g = _tree(scale=3.0)
    clipped = _run(aj.clip_by_global_norm(2.0), g)
    np.testing.assert_allclose(float(aj.global_norm(clipped)), 2.0, rtol=1e-6)


@pytest.mark.parametrize("axis", [None, 0])
def test_adaptive_grad_clip_matches_optax(axis, standard_promotion):
    params = _tree(seed=1)
    params["bias0"] = jnp.zeros(4)  # zero-initialised: eps keeps it trainable
    g = _tree(seed=2, scale=0.3)
    g["bias0"] = jnp.full(4, 0.01)
    if axis is not None:
        params = {"dense": params["dense"], "heads": params["heads"]}
        g = {"dense": g["dense"], "heads": g["heads"]}
    want = _run(optax.adaptive_grad_clip(0.1, axis=axis), g, params)
    got = _run(aj.adaptive_grad_clip(0.1, axis=axis), g, params)
    _assert_trees_equal(got, want, rtol=1e-6)
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(g), strict=True)
    ]
    assert any(changed), "the test must clip something"


def test_adaptive_grad_clip_bounds_each_unit():
    params, g = _tree(seed=1), _tree(seed=2, scale=0.5)
    got = _run(aj.adaptive_grad_clip(0.05), g, params)
    ratio = np.asarray(aj.unit_norms(got["dense"])) / np.maximum(
        np.asarray(aj.unit_norms(params["dense"])), 1e-3
    )
    assert np.all(ratio <= 0.05 * (1 + 1e-6))


def _mesh_and_sharding():
    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("x",))
    return mesh, NamedSharding(mesh, P("x"))


def test_clip_by_global_norm_sharded_on_eight_devices_matches_one():
    _, shard = _mesh_and_sharding()
    rng = np.random.default_rng(5)
    g = {
        "a": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
    }
    tx = aj.clip_by_global_norm(1.0)
    want = _run(tx, g)
    got = _run(tx, jax.device_put(g, shard))
    assert len(got["a"].sharding.device_set) == 8
    _assert_trees_equal(got, want, rtol=1e-6)
    np.testing.assert_allclose(float(aj.global_norm(got)), 1.0, rtol=1e-6)


def test_clip_by_global_norm_axis_name_in_shard_map():
    mesh, _ = _mesh_and_sharding()
    g = {"a": jnp.asarray(np.random.default_rng(6).normal(size=(16, 4)), jnp.float32)}
    tx = aj.clip_by_global_norm(1.0, axis_name="x")
    try:
        shard_map = jax.shard_map
    except AttributeError:  # older JAX
        from jax.experimental.shard_map import shard_map
    fn = shard_map(
        lambda u: tx.update(u, tx.init(None))[0], mesh=mesh, in_specs=P("x"), out_specs=P("x")
    )
    got = jax.jit(fn)(g)
    want = _run(aj.clip_by_global_norm(1.0), g)
    _assert_trees_equal(got, want, rtol=1e-6)


def test_dtypes_integer_and_none_leaves():
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "n": jnp.asarray(2), "skip": None}
    g = {
        "w": jnp.full((3, 2), 4.0, jnp.bfloat16),
        "n": np.zeros((), jax.dtypes.float0),
        "skip": None,
    }
    for tx in (aj.clip(1.0), aj.clip_by_global_norm(1.0), aj.adaptive_grad_clip(0.5)):
        out = _run(tx, g, params)
        assert out["w"].dtype == jnp.bfloat16
        assert out["n"].dtype == jax.dtypes.float0 and out["skip"] is None


def test_complex_clip_keeps_phase():
    g = {"z": jnp.asarray([3 + 4j, 0.3 + 0.4j], jnp.complex64)}
    out = _run(aj.clip(1.0), g)["z"]
    np.testing.assert_allclose(np.asarray(out), [0.6 + 0.8j, 0.3 + 0.4j], rtol=1e-6)
    np.testing.assert_allclose(float(aj.global_norm(g)), np.sqrt(25.25), rtol=1e-6)


def test_validation():
    with pytest.raises(ValueError, match="max_delta"):
        aj.clip(-1.0)
    with pytest.raises(ValueError, match="max_norm"):
        aj.clip_by_global_norm(0.0)
    with pytest.raises(ValueError, match="clipping"):
        aj.adaptive_grad_clip(0.0)
    with pytest.raises(ValueError, match="eps"):
        aj.adaptive_grad_clip(0.1, eps=-1.0)
    tx = aj.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(_tree(), tx.init(None))
    with pytest.raises(ValueError, match="no default reduction axes"):
        aj.unit_norms(jnp.ones((1, 2, 1, 2, 1, 2)))
