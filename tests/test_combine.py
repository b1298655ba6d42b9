"""Tests of accel_jax.combine: chain, masked, partition, path_labels, freeze."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj

PARAMS = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "head": jnp.ones(4)}


def grads_like(params, value=0.5):
    return jax.tree.map(lambda p: jnp.full_like(p, value), params)


def test_chain_matches_manual_composition():
    tx = aj.chain(aj.scale(3.0), aj.scale_by_learning_rate(0.1))
    u, state = tx.update(grads_like(PARAMS), tx.init(PARAMS))
    np.testing.assert_allclose(u["head"], -0.15, rtol=1e-6)
    assert isinstance(state, tuple) and len(state) == 2


def test_chain_mixes_with_optax_transforms(standard_promotion):
    ours = aj.chain(optax.clip_by_global_norm(1.0), aj.adam(0.1))
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    g = grads_like(PARAMS, 3.0)
    u1, _ = ours.update(g, ours.init(PARAMS), PARAMS)
    u2, _ = ref.update(g, ref.init(PARAMS), PARAMS)
    # rtol 1e-5: optax rounds 1 - b2 and 1 - b2**t differently in float32 (~7e-6 at step 1).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), u1, u2)
    # ...and accel_jax inside an optax chain
    inner = optax.chain(optax.scale(1.0), aj.sgd(0.1, momentum=0.9))
    u3, _ = inner.update(g, inner.init(PARAMS), PARAMS)
    np.testing.assert_allclose(u3["head"], -0.3, rtol=1e-6)


def test_chain_forwards_extra_args_only_to_those_that_take_them():
    seen = {}

    def update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    recorder = aj.GradientTransformationExtraArgs(lambda p: aj.EmptyState(), update)
    tx = aj.chain(aj.scale(1.0), recorder)
    tx.update(grads_like(PARAMS), tx.init(PARAMS), PARAMS, value=3.0)
    assert seen == {"value": 3.0}


def test_chain_rejects_a_non_transformation():
    with pytest.raises(TypeError, match="element 1"):
        aj.chain(aj.scale(1.0), lambda x: x)


def test_masked_applies_inner_only_where_selected_and_keeps_no_state_elsewhere():
    mask = {"dense": {"kernel": True, "bias": False}, "head": False}
    tx = aj.masked(aj.sgd(0.1, momentum=0.9), mask)
    state = tx.init(PARAMS)
    # momentum state exists for the kernel only
    traces = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (2, 3)]
    assert len(traces) == 1
    assert not any(getattr(x, "shape", ()) in [(3,), (4,)] for x in jax.tree.leaves(state))
    u, _ = tx.update(grads_like(PARAMS), state, PARAMS)
    np.testing.assert_allclose(u["dense"]["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_array_equal(u["dense"]["bias"], 0.5)
    np.testing.assert_array_equal(u["head"], 0.5)


def test_masked_accepts_prefix_mask_and_function():
    tx = aj.masked(aj.scale(0.0), {"dense": True, "head": False})
    u, _ = tx.update(grads_like(PARAMS), tx.init(PARAMS))
    np.testing.assert_array_equal(u["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(u["head"], 0.5)
    fn = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)
    tx = aj.masked(aj.scale(0.0), fn)
    u, _ = tx.update(grads_like(PARAMS), tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(u["dense"]["kernel"], 0.0)
    np.testing.assert_array_equal(u["dense"]["bias"], 0.5)


def test_partition_by_labels_tree_matches_separate_optimizers():
    labels = {"dense": {"kernel": "adam", "bias": "sgd"}, "head": "sgd"}
    tx = aj.partition({"adam": aj.adam(0.01), "sgd": aj.sgd(0.1)}, labels)
    g = grads_like(PARAMS, 2.0)
    u, state = tx.update(g, tx.init(PARAMS), PARAMS)
    a = aj.adam(0.01)
    ua, _ = a.update(g["dense"]["kernel"], a.init(PARAMS["dense"]["kernel"]))
    np.testing.assert_allclose(u["dense"]["kernel"], ua, rtol=1e-6)
    np.testing.assert_allclose(u["head"], -0.2, rtol=1e-6)
    assert set(state.inner_states) == {"adam", "sgd"}


def test_partition_with_path_labels_and_freeze():
    labels = aj.path_labels(lambda path, _: "frozen" if path.startswith("dense") else "train")
    tx = aj.partition({"train": aj.adam(0.01), "frozen": aj.freeze()}, labels)
    state = tx.init(PARAMS)
    # the frozen group keeps no optimizer state
    frozen_leaves = jax.tree.leaves(state.inner_states["frozen"])
    assert frozen_leaves == []
    u, _ = tx.update(grads_like(PARAMS), state, PARAMS)
    np.testing.assert_array_equal(u["dense"]["kernel"], 0.0)
    assert float(jnp.abs(u["head"]).min()) > 0


def test_partition_unknown_label_names_path_and_label():
    with pytest.raises(ValueError, match=r"\['head'\].*'oops'"):
        aj.partition({"a": aj.sgd(0.1)}, {"dense": "a", "head": "oops"}).init(PARAMS)


def test_freeze_with_mask():
    tx = aj.freeze({"dense": False, "head": True})
    u, _ = tx.update(grads_like(PARAMS), tx.init(PARAMS))
    np.testing.assert_array_equal(u["head"], 0.0)
    np.testing.assert_array_equal(u["dense"]["kernel"], 0.5)
