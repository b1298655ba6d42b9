"""The fast paths agree with the plain path: apply_step / make_step and flat params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax.fused import has_kernel_step
from tests.problems import layer_like_params, random_grads

OPTIMIZERS = {
    "adam": lambda: aj.adam(1e-2),
    "adamw": lambda: aj.adamw(1e-2, weight_decay=1e-2),
    "amsgrad": lambda: aj.adam(1e-2, amsgrad=True),
    "adam_8bit": lambda: aj.adam(1e-2, state_bits=8),
    "adam_bf16_moments": lambda: aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "sgd": lambda: aj.sgd(1e-2),
    "sgd_nesterov": lambda: aj.sgd(1e-2, momentum=0.9, nesterov=True),
    "sgd_keras": lambda: aj.sgd(1e-2, momentum=0.9, weight_decay=1e-3, convention="keras"),
    "rmsprop": lambda: aj.rmsprop(1e-2),
    "rmsprop_centered_momentum": lambda: aj.rmsprop(1e-2, centered=True, momentum=0.9),
    "adagrad": lambda: aj.adagrad(1e-2),
    "adamax": lambda: aj.adamax(1e-2),
    "nadam": lambda: aj.nadam(1e-2, convention="torch"),
}


_params = layer_like_params
_grads = random_grads


def _plain_trajectory(tx, params, steps=5):
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return aj.apply_updates(params, updates), state

    for i in range(steps):
        params, state = step(params, state, _grads(params, i))
    return params, state


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_step_is_bit_identical_to_update_then_apply(name):
    tx = OPTIMIZERS[name]()
    params = _params()
    state = tx.init(params)
    grads = _grads(params, 0)
    updates, want_state = tx.update(grads, state, params)
    want = aj.apply_updates(params, updates)
    got, got_state = aj.apply_step(tx, params, state, grads)
    _assert_trees_equal(got, want)
    _assert_trees_equal(got_state, want_state)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_make_step_with_donation_is_bit_identical_to_plain_jit(name):
    tx = OPTIMIZERS[name]()
    want, want_state = _plain_trajectory(tx, _params())
    step = aj.make_step(tx)
    params = _params()
    state = tx.init(params)
    for i in range(5):
        params, state = step(params, state, _grads(params, i))
    _assert_trees_equal(params, want)
    _assert_trees_equal(state, want_state)


def test_make_step_donates_params_and_state():
    tx = aj.adam(1e-3)
    params = {"w": jnp.ones((64, 64))}
    state = tx.init(params)
    old_w, old_mu = params["w"], state[0].mu["w"]
    aj.make_step(tx)(params, state, {"w": jnp.ones((64, 64))})
    assert old_w.is_deleted() and old_mu.is_deleted()
    kept = {"w": jnp.ones((64, 64))}
    aj.make_step(tx, donate=False)(kept, tx.init(kept), {"w": jnp.ones((64, 64))})
    assert not kept["w"].is_deleted()


def test_make_step_forwards_extra_args():
    seen = {}

    def init(params):
        return aj.EmptyState()

    def update(updates, state, params=None, *, value=None):
        seen["value"] = value
        return updates, state

    tx = aj.GradientTransformationExtraArgs(init, update)
    step = aj.make_step(tx, jit=False)
    params = {"w": jnp.ones(2)}
    step(params, tx.init(params), {"w": jnp.ones(2)}, value=3.0)
    assert seen["value"] == 3.0


# ------------------------------------------------------------------------- flat params


def test_flatten_params_groups_by_dtype_and_round_trips():
    params = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "b": jnp.ones(4, jnp.bfloat16),
        "c": None,
        "d": jnp.arange(3),  # integer leaf: kept as it is
        "e": jnp.full((2,), 7.0),
    }
    flat, layout = aj.flatten_params(params)
    assert set(flat) == {"float32", "bfloat16", "other"}
    assert flat["float32"].shape == (8,) and flat["bfloat16"].shape == (4,)
    back = layout.unflatten(flat)
    assert jax.tree.structure(back, is_leaf=lambda x: x is None) == jax.tree.structure(
        params, is_leaf=lambda x: x is None
    )
    _assert_trees_equal(back, params)
    assert back["b"].dtype == jnp.bfloat16 and back["d"].dtype == params["d"].dtype
    _assert_trees_equal(layout.flatten(params), flat)


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"adam_8bit"}))
def test_flat_params_follow_the_tree_trajectory(name):
    """Elementwise optimizers give the same values on flat buffers as on the tree."""
    tx = OPTIMIZERS[name]()
    want, _ = _plain_trajectory(tx, _params())
    flat, layout = aj.flatten_params(_params())
    state = tx.init(flat)
    step = aj.make_step(tx)
    for i in range(5):
        flat, state = step(flat, state, layout.flatten(_grads(layout.unflatten(flat), i)))
    for got, ref in zip(
        jax.tree.leaves(layout.unflatten(flat)), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-7)
    # The state is a few contiguous buffers, whatever the number of leaves.
    big = [x for x in jax.tree.leaves(state) if x.ndim == 1]
    assert all(x.shape == flat["float32"].shape for x in big)


def test_flat_training_with_gradients_through_unflatten():
    """The documented loop: differentiate through ``unflatten``; int and None leaves pass."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2), "step": jnp.array(0), "none": None}

    def loss(p, x):
        return jnp.sum((x @ p["w"] + p["b"]) ** 2)

    x = jnp.arange(6.0).reshape(2, 3)
    tx = aj.adam(1e-2)

    flat, layout = aj.flatten_params(params)
    state = tx.init(flat)
    step = aj.make_step(tx)
    tree_params, tree_state = params, tx.init(params)
    for _ in range(3):
        g = jax.grad(lambda f: loss(layout.unflatten(f), x), allow_int=True)(flat)
        flat, state = step(flat, state, g)
        tg = jax.grad(loss, allow_int=True)(tree_params, x)
        tree_params, tree_state = aj.apply_step(tx, tree_params, tree_state, tg)
    got = layout.unflatten(flat)
    np.testing.assert_allclose(got["w"], tree_params["w"], rtol=1e-6)
    np.testing.assert_allclose(got["b"], tree_params["b"], rtol=1e-6, atol=1e-7)
    assert int(got["step"]) == 0 and got["none"] is None


def test_gradient_through_unflatten_is_one_concatenation():
    """Not one padded, full-size buffer per leaf (quadratic in the number of leaves)."""
    flat, layout = aj.flatten_params({f"p{i:03d}": jnp.ones((4, 8)) for i in range(200)})

    def loss(f):
        return sum(jnp.sum(jnp.tanh(x)) for x in jax.tree.leaves(layout.unflatten(f)))

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(flat))
    assert "pad" not in jaxpr
    assert jaxpr.count("concatenate") == 1
    want = jax.tree.map(lambda x: 1 - jnp.tanh(x) ** 2, layout.unflatten(flat))
    np.testing.assert_allclose(jax.grad(loss)(flat)["float32"], layout.flatten(want)["float32"])


def test_make_step_takes_keywords_and_donates_them():
    """Keywords make the argument order explicit (the reverse of optax's update); the
    params and state passed by keyword are donated like positional ones."""
    tx = aj.adam(1e-2)
    params = {"w": jnp.linspace(-1.0, 1.0, 8)}
    grads = {"w": jnp.cos(params["w"])}
    expected, _ = aj.make_step(tx, donate=False)(params, tx.init(params), grads)
    step = aj.make_step(tx)
    p_in, s_in = jax.tree.map(jnp.copy, params), tx.init(params)
    got, _ = step(params=p_in, opt_state=s_in, grads=grads)
    np.testing.assert_array_equal(got["w"], expected["w"])
    assert p_in["w"].is_deleted() and s_in[0].mu["w"].is_deleted()


# --- partition keeps its groups' native kernels (apply_step / make_step) -----------------

_LABELS = {"dense": {"kernel": "a", "bias": "b"}, "emb": "a", "scale": "c"}


def _groups(with_lion):
    groups = {"a": aj.adamw(1e-2, weight_decay=0.1), "b": aj.sgd(1e-2, momentum=0.9),
              "c": aj.freeze()}
    return {**groups, "d": aj.lion(1e-3)} if with_lion else groups


def _kernel_matches_xla(tx, targets, exact_leaves, exact_states=()):
    """One jitted step per path, replayed over 3 steps: the kernel runs (its custom calls
    are in the lowered step), equals the XLA path to float32 rounding (rtol 1e-6, FMAs),
    and exactly on the leaves and the group states that have no kernel."""
    params = _params()
    with_kernel = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    xla = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    state = tx.init(params)
    text = with_kernel.lower(params, state, params).as_text()
    assert [text.count(f"custom_call @{t}(") for t in targets] == [1] * len(targets)
    a, sa, b, sb = params, state, params, state
    for i in range(3):
        a, sa = with_kernel(a, sa, _grads(params, i))
        b, sb = xla(b, sb, _grads(params, i))
    for x, y in zip(jax.tree.leaves((a, sa)), jax.tree.leaves((b, sb)), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(y)) or 1.0))
    assert not np.array_equal(a["dense"]["kernel"], params["dense"]["kernel"])
    for key in exact_leaves:
        np.testing.assert_array_equal(a[key], b[key])
    for k in exact_states:
        _assert_trees_equal(sa.inner_states[k], sb.inner_states[k])


@pytest.mark.parametrize("with_lion", [False, True])
def test_partition_runs_each_groups_kernel(native_kernels, with_lion):
    labels = {**_LABELS, "emb": "d"} if with_lion else _LABELS
    tx = aj.partition(_groups(with_lion), labels)
    assert has_kernel_step(tx) and has_kernel_step(aj.skip_non_finite(tx))
    exact = ("scale", "emb") if with_lion else ("scale",)
    _kernel_matches_xla(tx, ["accel_jax_adam_f32", "accel_jax_momentum_f32"], exact,
                        ("c", "d") if with_lion else ("c",))
    # kernel=True with no parameter in a group that has a kernel: said, not ignored.
    empty = aj.partition(_groups(with_lion), "c")
    with pytest.raises(ValueError, match="no group of this partition that has a native"):
        aj.apply_step(empty, {"w": jnp.ones(2)}, empty.init({"w": jnp.ones(2)}),
                      {"w": jnp.ones(2)}, kernel=True)


def test_selective_transform_keeps_the_kernel(native_kernels):
    freeze_mask = {"dense": False, "emb": True, "scale": True}
    tx = aj.selective_transform(aj.adam(1e-2), freeze_mask=freeze_mask)
    _kernel_matches_xla(tx, ["accel_jax_adam_f32"], ("emb", "scale"), ("freeze",))


def test_kernel_argument_must_be_none_or_a_bool():
    tx = aj.adam(1e-2)
    params = {"w": jnp.ones(2)}
    for bad in (1, 0.0, "yes"):
        with pytest.raises(ValueError, match=f"kernel must be None, True or False, got {bad!r}"):
            aj.apply_step(tx, params, tx.init(params), params, kernel=bad)
    no_kernel = aj.partition({"d": aj.lion(1e-3), "c": aj.freeze()}, {"w": "d"})
    assert not has_kernel_step(no_kernel)
    with pytest.raises(ValueError, match="has no native kernel"):
        aj.apply_step(no_kernel, params, no_kernel.init(params), params, kernel=True)
