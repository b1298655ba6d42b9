"""Tests of accel_jax.base: apply_updates, identity, helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax.base import check_structure, compute_dtype, leafwise


def test_apply_updates_keeps_param_dtype_and_skips_none_and_int():
    params = {"w": jnp.ones(3, jnp.bfloat16), "n": None, "i": jnp.int32(4), "s": jnp.float32(2.0)}
    grads = jax.grad(
        lambda p: jnp.sum(p["w"].astype(jnp.float32)) + p["s"] * 3.0, allow_int=True
    )(params)
    updates = {"w": jnp.full(3, -0.5, jnp.float32), "n": None, "i": grads["i"], "s": grads["s"]}
    new = aj.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), [0.5, 0.5, 0.5])
    assert new["n"] is None
    assert new["i"] is params["i"]
    assert float(new["s"]) == 5.0


def test_identity_returns_updates_unchanged():
    tx = aj.identity()
    u = {"a": jnp.arange(3.0)}
    out, state = tx.update(u, tx.init(u))
    assert out is u and state == aj.EmptyState()


def test_leafwise_passes_float0_through():
    g = jax.grad(lambda p: p["w"].sum(), allow_int=True)({"w": jnp.ones(2), "i": jnp.int32(1)})
    doubled = jax.tree.map(leafwise(lambda x: 2 * x), g)
    assert doubled["i"].dtype == jax.dtypes.float0
    np.testing.assert_array_equal(doubled["w"], [2.0, 2.0])


def test_compute_dtype_is_widest():
    assert compute_dtype(jnp.ones(1, jnp.bfloat16), jnp.ones(1, jnp.float32)) == jnp.float32
    assert compute_dtype(jnp.ones(1, jnp.bfloat16)) == jnp.float32  # at least float32
    assert compute_dtype(jnp.ones(1, jnp.complex64)) == jnp.complex64


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"a": jnp.ones(1), "c": jnp.ones(1)}, r"path \['c'\]"),
        ({"a": jnp.ones(1)}, r"path \['b'\] exists only in"),
        ({"a": jnp.ones(1), "b": jnp.ones(1), "z": jnp.ones(1)}, r"path \['z'\] exists only in"),
    ],
)
def test_check_structure_names_first_mismatching_path(updates, message):
    reference = {"a": jnp.ones(1), "b": jnp.ones(1)}
    with pytest.raises(ValueError, match=message):
        check_structure(updates, reference, "the optimizer state")
    check_structure(reference, reference, "the optimizer state")  # no error


def test_check_structure_reports_shape_mismatch_by_path():
    with pytest.raises(ValueError, match=r"\['b'\].*shape \(3,\).*shape \(1,\)"):
        check_structure({"a": jnp.ones(1), "b": jnp.ones(3)}, {"a": jnp.ones(1), "b": jnp.ones(1)},
                        "the optimizer state")


def test_optimizer_rejects_a_gradient_of_the_wrong_shape():
    tx = aj.adam(1e-3)
    state = tx.init({"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"\['w'\].*\(3, 2\)"):
        tx.update({"w": jnp.ones((3, 2))}, state)
