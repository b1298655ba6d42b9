"""pack_state: the state packed into one buffer per dtype, params and gradients kept as trees.

References: the same optimizer on the tree (values per parameter unchanged), the packed
XLA path for the native kernels, an unsharded run for the ZeRO-1 sharded one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import accel_jax as aj
from accel_jax.fused import has_kernel_step
from tests.problems import random_grads


def _params():
    """Leaves of several shapes, a bfloat16 leaf (its own group) and a scalar."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (80, 64)), "bias": jnp.zeros(64)},
        "emb": jax.random.normal(k[1], (700,)),
        "half": jax.random.normal(k[2], (33,)).astype(jnp.bfloat16),
        "scale": jnp.ones(()),
    }


# Elementwise optimizers: on the packed state the values per parameter are the tree's.
ELEMENTWISE = {
    "adam": lambda: aj.adam(1e-2),
    "adamw": lambda: aj.adamw(1e-2, weight_decay=0.1),
    "amsgrad": lambda: aj.adam(1e-2, amsgrad=True),
    "adam_bf16_moments": lambda: aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "adamax": lambda: aj.adamax(1e-2),
    "nadamw": lambda: aj.nadamw(1e-2),
    "radam": lambda: aj.radam(1e-2),
    "adagrad": lambda: aj.adagrad(1e-2),
    "adadelta": lambda: aj.adadelta(1.0),
    "rmsprop_centered": lambda: aj.rmsprop(1e-2, centered=True, momentum=0.9),
    "sgd_nesterov": lambda: aj.sgd(1e-2, momentum=0.9, nesterov=True),
    "lion": lambda: aj.lion(1e-3),
    "schedule_free_adamw": lambda: aj.schedule_free_adamw(1e-2, warmup_steps=2),
    "clip_then_adam": lambda: aj.chain(aj.clip(0.5), aj.adam(1e-2)),
}


def _side_by_side(step_a, state_a, step_b, state_b, params, steps=2):
    """Both steps from the same params over the same gradients: ``(a, state_a, b, state_b)``."""
    a, b = params, params
    for i in range(steps):
        a, state_a = step_a(a, state_a, random_grads(params, i))
        b, state_b = step_b(b, state_b, random_grads(params, i))
    return a, state_a, b, state_b


def _close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.max(np.abs(y)) or 1.0))


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_packed_state_gives_the_trees_values(name):
    tree_tx, tx = ELEMENTWISE[name](), aj.pack_state(ELEMENTWISE[name]())
    params = _params()
    tree_state, state = tree_tx.init(params), tx.init(params)
    n_tree, n_packed = len(jax.tree.leaves(tree_state)), len(jax.tree.leaves(state))
    assert n_packed < n_tree  # every per-leaf slot became one buffer per dtype

    @jax.jit
    def both(a, sa, b, sb, g):
        ua, sa = tree_tx.update(g, sa, a)
        ub, sb = tx.update(g, sb, b)
        return aj.apply_updates(a, ua), sa, aj.apply_updates(b, ub), sb

    a, b = params, params
    for i in range(3):
        a, tree_state, b, state = both(a, tree_state, b, state, random_grads(params, i))
    _close(b, a)
    assert jax.tree.structure(b) == jax.tree.structure(params)


def test_the_state_is_one_buffer_per_dtype_and_keeps_hyperparams():
    tx = aj.pack_state(aj.adamw(1e-2, weight_decay=0.1))
    params = _params()
    state = tx.init(params)
    mu = state[0].mu
    assert set(mu) == {"float32", "bfloat16"}
    assert mu["float32"].shape == (80 * 64 + 64 + 700 + 1,) and mu["bfloat16"].shape == (33,)
    assert aj.state_bytes(state) == aj.state_bytes(aj.adamw(1e-2).init(params))
    assert float(aj.get_hyperparams(state)["learning_rate"]) == pytest.approx(1e-2)
    state = aj.set_hyperparams(state, learning_rate=0.5)
    assert float(aj.get_hyperparams(state)["learning_rate"]) == 0.5
    with pytest.raises(ValueError, match="learning_rate"):
        aj.set_hyperparams(state, learning_rate=-1.0)


def test_a_checkpoint_restores_and_resumes_identically():
    tx = aj.pack_state(aj.adam(1e-2))
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    params = _params()
    p, s = params, tx.init(params)
    for i in range(2):
        p, s = step(p, s, random_grads(params, i))
    saved = jax.tree.map(np.asarray, (p, s))  # what a checkpointer writes
    restored = jax.tree.map(jnp.asarray, saved)
    a, b = step(p, s, random_grads(params, 2)), step(*restored, random_grads(params, 2))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_params_that_do_not_fit_the_state_are_named():
    tx = aj.pack_state(aj.adam(1e-2))
    params = _params()
    state = tx.init(params)
    other = {**params, "emb": jnp.ones(701)}
    with pytest.raises(ValueError, match=r"pack_state: .*do not fit this state.*5886.*5885"):
        tx.update(other, state, other)
    plain = aj.adam(1e-2).init(params)  # the state of the unpacked optimizer
    with pytest.raises(ValueError, match="pack_state: .*expected"):
        tx.update(params, plain, params)
    for bad in (0, 2.5, True, "8"):
        with pytest.raises(ValueError, match="pad_to"):
            aj.pack_state(aj.adam(1e-2), pad_to=bad)
    with pytest.raises(ValueError, match="inner"):
        aj.pack_state(lambda g: g)


def test_padding_keeps_the_values_and_pads_every_buffer():
    params = _params()
    tx = aj.pack_state(aj.adam(1e-2), pad_to=8)
    state = tx.init(params)
    assert {k: v.shape[0] % 8 for k, v in state[0].mu.items()} == {"float32": 0, "bfloat16": 0}
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    ref = aj.pack_state(aj.adam(1e-2))
    ref_step = jax.jit(lambda p, s, g: aj.apply_step(ref, p, s, g, kernel=False))
    a, sa, b, sb = _side_by_side(step, state, ref_step, ref.init(params), params)
    _close(a, b)
    tail = np.asarray(sa[0].nu["float32"])[sb[0].nu["float32"].shape[0]:]
    np.testing.assert_array_equal(tail, 0.0)  # the padding's gradients are zero


def test_zero1_splits_the_padded_buffers_over_the_data_axis():
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    tx = aj.pack_state(aj.adamw(1e-2, weight_decay=0.1), pad_to=len(devices))
    params = jax.device_put(_params(), replicated)
    shardings = aj.state_shardings(tx, params, mode="zero1")
    assert shardings[0].mu["float32"].spec == P("data")
    state = aj.sharded_init(tx, params, mode="zero1")
    shard = state[0].mu["float32"].addressable_shards[0].data
    assert shard.shape[0] * len(devices) == state[0].mu["float32"].shape[0]
    step = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g),
                   out_shardings=(replicated, shardings))
    ref = aj.adamw(1e-2, weight_decay=0.1)
    ref_step = jax.jit(lambda p, s, g: aj.apply_step(ref, p, s, g, kernel=False))
    a, sa, b, sb = _side_by_side(step, state, ref_step, ref.init(params), params)
    _close(a, b)
    assert sa[0].mu["float32"].sharding.spec == P("data")


# --- the native kernels on packed state ----------------------------------------------------

KERNELS = {
    "adam": (lambda: aj.adam(1e-2), "accel_jax_adam_f32_packed"),
    "adamw": (lambda: aj.adamw(1e-2, weight_decay=0.1), "accel_jax_adam_f32_packed"),
    "adam_bf16_moments": (
        lambda: aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "accel_jax_adam_bf16_packed",
    ),
    "sgd_nesterov": (lambda: aj.sgd(1e-2, momentum=0.9, nesterov=True),
                     "accel_jax_momentum_f32_packed"),
    "rmsprop": (lambda: aj.rmsprop(1e-2), "accel_jax_rms_f32_packed"),
    # no packed variant: the kernel runs on the concatenated buffer
    "adam_8bit": (lambda: aj.adam(1e-2, state_bits=8), "accel_jax_adam8_f32"),
    # a wrapper inside: its forwarded kernel step, on the concatenated buffer
    "skip_non_finite_inside": (lambda: aj.skip_non_finite(aj.adam(1e-2)), "accel_jax_adam_f32"),
}


def _kernel_agrees(tx, target, params, steps=3):
    with_kernel = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=True))
    xla = jax.jit(lambda p, s, g: aj.apply_step(tx, p, s, g, kernel=False))
    state = tx.init(params)
    text = with_kernel.lower(params, state, params).as_text()
    assert f"custom_call @{target}(" in text
    a, sa, b, sb = _side_by_side(with_kernel, state, xla, state, params, steps)
    codes = [x for x in jax.tree.leaves(sa) if x.dtype == jnp.uint8]
    if codes:  # 8-bit codes: the kernel's rounding equals the XLA path's
        ref = [x for x in jax.tree.leaves(sb) if x.dtype == jnp.uint8]
        assert all(np.mean(np.asarray(x) == np.asarray(y)) > 0.999
                   for x, y in zip(codes, ref, strict=True))
        _close(a, b)
    else:
        _close((a, sa), (b, sb))
    assert not np.array_equal(a["dense"]["kernel"], params["dense"]["kernel"])
    return a


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_the_native_kernels_run_on_packed_state(native_kernels, name):
    factory, target = KERNELS[name]
    params = {**_params(), "big": jnp.linspace(-1.0, 1.0, 5000)}  # 8-bit: a quantized buffer
    tx = aj.pack_state(factory())
    assert has_kernel_step(tx)
    _kernel_agrees(tx, target, params)


def test_wrappers_outside_keep_the_packed_kernel(native_kernels):
    params = _params()
    for tx in (aj.skip_non_finite(aj.pack_state(aj.adam(1e-2))),
               aj.accumulate_gradients(aj.pack_state(aj.adam(1e-2)), every_k=1)):
        _kernel_agrees(tx, "accel_jax_adam_f32_packed", params)


def test_the_packed_kernel_updates_in_place_under_donation(native_kernels):
    tx = aj.pack_state(aj.adam(1e-2))
    params = _params()
    step = aj.make_step(tx)
    state = tx.init(params)
    mu = state[0].mu["float32"]
    new_params, new_state = step(jax.tree.map(jnp.copy, params), state, random_grads(params, 0))
    assert mu.is_deleted()  # donated, and the result reuses it
    assert new_state[0].mu["float32"].shape == mu.shape


def test_the_packed_kernel_is_differentiable(native_kernels):
    """The JVP is the XLA formula's: gradients through the step agree with the XLA path's."""
    params, grads = _params(), random_grads(_params(), 0)
    for inner in (aj.sgd(1e-1, momentum=0.9, nesterov=True), aj.adamw(1e-2, weight_decay=0.5)):
        tx = aj.pack_state(inner)
        state = tx.init(params)

        def loss(scale, kernel, tx=tx, state=state):
            g = jax.tree.map(lambda x: x * scale.astype(x.dtype), grads)
            p = jax.tree.map(lambda x: x * scale.astype(x.dtype), params)
            p, _ = aj.apply_step(tx, p, state, g, kernel=kernel)
            return jnp.sum(p["dense"]["kernel"] ** 2) + jnp.sum(p["emb"] ** 2)

        for scale in (jnp.float32(0.5), jnp.float32(2.0)):
            np.testing.assert_allclose(jax.grad(loss)(scale, True), jax.grad(loss)(scale, False),
                                       rtol=1e-5)


def test_flax_optimizers_take_a_packed_state():
    """nnx.Optimizer and aj.flax.Optimizer with pack_state: the tree optimizer's values."""
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.b(jax.nn.relu(self.a(x)))

    @nnx.jit
    def step(model, optimizer, x):
        optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    results = []
    for cls, tx in ((nnx.Optimizer, aj.adamw(1e-2)),
                    (nnx.Optimizer, aj.pack_state(aj.adamw(1e-2))),
                    (aj.flax.Optimizer, aj.pack_state(aj.adamw(1e-2)))):
        model = Model(nnx.Rngs(0))
        optimizer = cls(model, tx, wrt=nnx.Param)
        for _ in range(3):
            step(model, optimizer, jnp.ones((5, 3)))
        results.append(nnx.state(model, nnx.Param))
    _close(results[1], results[0])
    _close(results[2], results[0])


# Transformations that need the params' tree -> the name pack_state's error must give.
NEEDS_TREE = {
    "lamb": (lambda: aj.lamb(1e-3), "lamb"),
    "lars": (lambda: aj.lars(1e-3), "lars"),
    "muon": (lambda: aj.muon(1e-3), "muon"),
    "adafactor": (lambda: aj.adafactor(1e-3), "adafactor"),
    "adaptive_grad_clip": (lambda: aj.adaptive_grad_clip(0.01), "adaptive_grad_clip"),
    "max_norm": (lambda: aj.max_norm(1.0), "max_norm"),
    "prune_by_magnitude": (lambda: aj.prune_by_magnitude(0.5), "prune_by_magnitude"),
    "clip_by_block_rms": (lambda: aj.clip_by_block_rms(1.0), "clip_by_block_rms"),
    "centralize": (aj.centralize, "centralize"),
    "scale_by_trust_ratio": (aj.scale_by_trust_ratio, "scale_by_trust_ratio"),
    "scale_by_factored_rms": (aj.scale_by_factored_rms, "scale_by_factored_rms"),
    "scale_by_param_block_rms": (aj.scale_by_param_block_rms, "scale_by_param_block_rms"),
    "scale_by_muon": (aj.scale_by_muon, "scale_by_muon"),
    "scale_by_shape": (aj.scale_by_shape, "scale_by_shape"),
    "partition": (lambda: aj.partition({"a": aj.adam(1e-3)}, lambda p: jax.tree.map(
        lambda _: "a", p)), "partition"),
    "masked_by_tree": (lambda: aj.masked(aj.adam(1e-3), {"w": True}), "masked"),
    "adamw_with_decay_mask": (lambda: aj.adamw(1e-3, mask=lambda p: p), "mask"),
    "chain": (lambda: aj.chain(aj.adaptive_grad_clip(0.01), aj.adamw(1e-3)),
              "adaptive_grad_clip"),
    "named_chain": (lambda: aj.named_chain(("c", aj.centralize()), ("a", aj.adam(1e-3))),
                    "centralize"),
    "skip_non_finite": (lambda: aj.skip_non_finite(aj.lamb(1e-3)), "lamb"),
    "nested_wrappers": (lambda: aj.accumulate_gradients(aj.skip_non_finite(aj.chain(
        aj.clip_by_block_rms(1.0), aj.adam(1e-3))), 2), "clip_by_block_rms"),
    "lookahead": (lambda: aj.lookahead(aj.muon(1e-3), 2, 0.5), "muon"),
    "apply_if_finite": (lambda: aj.apply_if_finite(aj.lars(1e-3), 2), "lars"),
    "multi_steps": (lambda: aj.MultiSteps(aj.adafactor(1e-3), 2).gradient_transformation(),
                    "adafactor"),
}


@pytest.mark.parametrize("name", sorted(NEEDS_TREE))
def test_an_inner_that_needs_the_tree_is_refused_at_construction(name):
    factory, culprit = NEEDS_TREE[name]
    with pytest.raises(ValueError, match=rf"pack_state: inner needs the params as a tree "
                                         rf"\([^)]*{culprit}.*elementwise.*outside"):
        aj.pack_state(factory())


def test_elementwise_inners_and_their_wrappers_are_accepted():
    accepted = {
        **ELEMENTWISE,
        "clip_by_global_norm_then_adamw": lambda: aj.chain(
            aj.clip_by_global_norm(1.0), aj.adamw(1e-2)),
        "masked_everywhere": lambda: aj.masked(aj.adam(1e-2), True),
        "skip_non_finite": lambda: aj.skip_non_finite(aj.adam(1e-2)),
        "lookahead": lambda: aj.lookahead(aj.sgd(1e-2, momentum=0.9), 2, 0.5),
        "adafactor_unfactored": lambda: aj.adafactor(
            1e-2, factored=False, clipping_threshold=None, multiply_by_parameter_scale=False),
    }
    for name, factory in accepted.items():
        tx = aj.pack_state(factory())  # no ValueError
        assert isinstance(tx, aj.GradientTransformation), name
    # the mark stays on the transformation that needs the tree: a wrapper outside is fine
    aj.chain(aj.adaptive_grad_clip(0.01), aj.pack_state(aj.adamw(1e-2)))
