"""accel_jax.sharding on 8 simulated CPU devices: the layout of every state leaf, for every
optimizer of the registry (tests/test_optimizers.py's OPTIMIZERS, so new ones are picked up)
and the wrappers, in "follow" and "zero1" modes; results equal to one device; per-device
memory of the jitted init; host offload; the nnx.Optimizer recipe.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import accel_jax as aj
from tests.test_optimizers import OPTIMIZERS

LR = 0.01


def _extra():
    """Wrappers, combinators, global reductions and the frontier optimizers."""
    extra = {
        "adam_8bit": lambda lr: aj.adam(lr, state_bits=8),
        "clip_global_norm_adam": lambda lr: aj.chain(aj.clip_by_global_norm(0.05), aj.adam(lr)),
        "partition": lambda lr: aj.partition(
            {"decay": aj.adamw(lr, weight_decay=0.1), "frozen": aj.freeze()},
            aj.path_labels(lambda path, _: "frozen" if path.startswith("['b2']") else "decay"),
        ),
        "accumulate": lambda lr: aj.accumulate_gradients(aj.adam(lr), 2),
        "skip_non_finite": lambda lr: aj.skip_non_finite(aj.sgd(lr, momentum=0.9)),
        "average_params": lambda lr: aj.chain(aj.adam(lr), aj.average_params(0.9)),
    }
    frontier = {  # global reductions: trust ratios, Muon's orthogonalization
        "muon": lambda lr: aj.muon(lr),
        "adafactor": lambda lr: aj.adafactor(lr, min_dim_size_to_factor=8),
        "lamb": lambda lr: aj.lamb(lr, weight_decay=0.01),
        "lars": lambda lr: aj.lars(lr),
        "lion": lambda lr: aj.lion(lr * 0.1),
        "radam": lambda lr: aj.radam(lr),
        "nadamw": lambda lr: aj.nadamw(lr, weight_decay=0.01),
        "adadelta": lambda lr: aj.adadelta(1.0),
        "schedule_free_adamw": lambda lr: aj.schedule_free_adamw(lr),
    }
    for name, make in frontier.items():
        if hasattr(aj, name.split("_8bit")[0]) and name not in OPTIMIZERS:
            extra[name] = make
    return extra


ALL = {**OPTIMIZERS, **_extra()}

# A (data=4, model=2) mesh; Megatron-style split of an MLP whose dims all divide.
PARAM_SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


def mesh2d():
    return Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))


def make_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (16, 64)) * 0.3,  # 1,024 values: 8-bit keeps it unquantized
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 128)) * 0.1,  # 8,192 values: 8-bit quantizes it
        "b2": jnp.zeros(128),
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def data():
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (32, 16)), jax.random.normal(ky, (32, 128))


def run(tx, params, state, steps, shardings=None):
    """``steps`` steps of one jitted step (compiled once), optionally with shardings."""
    x, y = data()

    def step(params, state):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return aj.apply_updates(params, updates), state

    step = jax.jit(step) if shardings is None else jax.jit(
        step, in_shardings=shardings, out_shardings=shardings)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def norm(spec):
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def names_in(spec):
    return {n for e in spec for n in ((e,) if isinstance(e, str) else (e or ()))}


def expected_follow_spec(path, leaf, params):
    """Independent oracle for the common case: a leaf whose path ends with a param's key
    (as ``.mu['w1']``) and whose shape is the param's takes the param's spec."""
    key = jax.tree_util.keystr(path)
    for name, p in params.items():
        if key.endswith(f"['{name}']") and leaf.shape == p.shape:
            return PARAM_SPECS[name]
    return None


STOCHASTIC = {"adam_8bit"}  # stochastic rounding from the values' bits: an ulp changes a code


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_optimizer_state_layout_and_result_equal_one_device(name):
    """follow and zero1 layouts of every leaf; 3 steps of zero1 on the (data, model) mesh
    (state split over both axes, params over model) equal 3 steps on one device."""
    mesh = mesh2d()
    params = make_params()
    tx = ALL[name](LR)
    p_sh = {k: NamedSharding(mesh, s) for k, s in PARAM_SPECS.items()}
    sharded = jax.device_put(params, p_sh)
    follow = aj.state_shardings(tx, sharded, mode="follow")
    flat = jax.tree_util.tree_flatten_with_path(jax.eval_shape(tx.init, params))[0]
    for (path, leaf), got in zip(flat, jax.tree.leaves(follow), strict=True):
        oracle = expected_follow_spec(path, leaf, params) if leaf.ndim else P()
        if oracle is not None:
            assert norm(got.spec) == norm(oracle), f"{name} {jax.tree_util.keystr(path)}"

    sh = aj.state_shardings(tx, sharded, mode="zero1")
    state = aj.sharded_init(tx, sharded, mode="zero1")
    assert jax.tree.structure(state) == jax.tree.structure(sh)
    flat_state = jax.tree_util.tree_flatten_with_path(state)[0]
    for (path, leaf), want, fol in zip(
        flat_state, jax.tree.leaves(sh), jax.tree.leaves(follow), strict=True
    ):
        where = f"{name} zero1 {jax.tree_util.keystr(path)}"
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), where  # created in place
        if leaf.ndim == 0:
            assert leaf.sharding.spec == P(), where  # scalars replicated
            continue
        # zero1 = follow + the data axis wherever a dimension divides
        assert names_in(fol.spec) <= names_in(leaf.sharding.spec), where
        assert "data" in names_in(leaf.sharding.spec) or all(
            d % 4 for d in leaf.shape), where
        if "data" in names_in(leaf.sharding.spec):  # no device holds more than a quarter
            assert leaf.addressable_shards[0].data.size * 4 <= leaf.size, where

    ref_params, ref_state = run(tx, params, tx.init(params), 3)
    new_params, new_state = run(tx, sharded, state, 3, shardings=(p_sh, sh))
    for (path, a), b, p0 in zip(jax.tree_util.tree_flatten_with_path(new_params)[0],
                                jax.tree.leaves(ref_params), jax.tree.leaves(params),
                                strict=True):
        # 8-bit: a float32 ulp flips a stochastic rounding; then a code step (<= 1/8 of
        # a moment) changes the next updates: bound the difference by 1/4 of the movement
        atol = 0.25 * float(jnp.max(jnp.abs(b - p0))) if name in STOCHASTIC else 1e-6
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=atol,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
    if name not in STOCHASTIC:
        for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6,
                                       err_msg=f"{name} state")
    for k, s in p_sh.items():  # the params keep their layout
        assert new_params[k].sharding.is_equivalent_to(s, new_params[k].ndim)


def test_zero1_with_replicated_params_splits_every_moment_over_data():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    params = jax.device_put(make_params(), NamedSharding(mesh, P()))
    state = aj.sharded_init(aj.adam(LR), params, mode="zero1")
    for leaf in jax.tree.leaves((state[0].mu, state[0].nu)):
        assert leaf.sharding.spec == P("data")
        assert leaf.addressable_shards[0].data.shape[0] == leaf.shape[0] // 8
    assert state[0].count.sharding.spec == P()


def test_init_never_holds_a_whole_leaf_on_one_device():
    """XLA's own accounting of the jitted init: per-device output and scratch bytes are
    1/8 of the state (ZeRO-1 on 8 devices), so no leaf is ever materialized whole."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    params = {"w": jax.ShapeDtypeStruct((1024, 256), jnp.float32),
              "b": jax.ShapeDtypeStruct((256,), jnp.float32)}
    tx = aj.adamw(1e-3, weight_decay=0.1)
    sh = aj.state_shardings(tx, params, P(), mesh=mesh, mode="zero1")
    stats = jax.jit(tx.init, out_shardings=sh).lower(params).compile().memory_analysis()
    total = aj.state_bytes(jax.eval_shape(tx.init, params))
    per_device = stats.output_size_in_bytes + stats.temp_size_in_bytes
    assert per_device <= total / 8 + 1024, (per_device, total)
    follow = aj.state_shardings(tx, params, P(), mesh=mesh)
    replicated = jax.jit(tx.init, out_shardings=follow).lower(params).compile().memory_analysis()
    assert replicated.output_size_in_bytes >= total  # the oracle sees the difference


def test_8bit_blocks_follow_the_param_leading_split():
    mesh = mesh2d()
    params = {"w": jax.ShapeDtypeStruct((128, 128), jnp.float32)}
    sh = aj.state_shardings(aj.adam(LR, state_bits=8), params, {"w": P("model", None)},
                            mesh=mesh)
    q = sh[0].mu["w"]
    assert isinstance(q, aj.QuantizedArray)
    assert q.codes.spec == P("model") and q.scale.spec == P("model")


def test_factored_second_moments_take_the_matching_axis():
    """optax's Adafactor: the factored moments are the param's shape with one axis dropped
    (by size, not position): each follows its remaining axis, found by the shape probe."""
    mesh = mesh2d()
    params = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)}
    tx = optax.adafactor(1e-3, min_dim_size_to_factor=8)
    state = jax.eval_shape(tx.init, params)[0]
    for spec in (P("model", None), P(None, "model")):
        sh = aj.state_shardings(tx, params, {"w": spec}, mesh=mesh)[0]
        for field in ("v_row", "v_col"):
            (kept,) = getattr(state, field)["w"].shape
            axis = (64, 32).index(kept)
            assert getattr(sh, field)["w"].spec == (P("model") if spec[axis] else P()), field


def test_partition_specs_with_mesh_and_errors():
    mesh = mesh2d()
    params = make_params()
    sh = aj.state_shardings(aj.sgd(LR, momentum=0.9), params, PARAM_SPECS, mesh=mesh)
    assert sh[0].trace["w1"].spec == P(None, "model")
    with pytest.raises(ValueError, match="mode"):
        aj.state_shardings(aj.adam(LR), params, PARAM_SPECS, mesh=mesh, mode="zero3")
    with pytest.raises(ValueError, match="data_axis='batch'"):
        aj.state_shardings(aj.adam(LR), params, PARAM_SPECS, mesh=mesh, mode="zero1",
                           data_axis="batch")
    with pytest.raises(ValueError, match="mesh"):
        aj.state_shardings(aj.adam(LR), params, P())
    with pytest.raises(ValueError, match="memory_kind='hbm'.*pinned_host"):
        aj.state_shardings(aj.adam(LR), params, PARAM_SPECS, mesh=mesh, memory_kind="hbm")


def test_state_in_host_memory_streams_through_the_step():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    params = jax.device_put(make_params(), NamedSharding(mesh, P()))
    tx = aj.adam(LR)
    sh = aj.state_shardings(tx, params, mode="zero1", memory_kind="pinned_host")
    state = jax.jit(tx.init, out_shardings=sh)(params)
    assert {leaf.sharding.memory_kind for leaf in jax.tree.leaves(state)} == {"pinned_host"}
    p_sh = jax.tree.map(lambda p: p.sharding, params)
    new_params, new_state = run(aj.offload_state(tx, sh), params, state, 2, shardings=(p_sh, sh))
    assert {leaf.sharding.memory_kind for leaf in jax.tree.leaves(new_state)} == {"pinned_host"}
    ref, _ = run(tx, make_params(), tx.init(make_params()), 2)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


def test_nnx_optimizer_recipe_keeps_the_model_sharding(standard_promotion):
    nnx = pytest.importorskip("flax.nnx")
    mesh = Mesh(np.array(jax.devices()), ("data",))
    model = nnx.Linear(16, 32, rngs=nnx.Rngs(0))
    before = jax.tree.map(lambda a: a.sharding, nnx.state(model, nnx.Param))
    with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh:
        nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(mesh, P())))
        optimizer = nnx.Optimizer(model, aj.with_sharded_init(aj.adam(LR), mode="zero1"),
                                  wrt=nnx.Param)
    (kernel_mu,) = jax.tree.leaves(optimizer.opt_state[0].mu["kernel"])
    assert kernel_mu.sharding.spec == P("data")
    after = jax.tree.map(lambda a: a.sharding, nnx.state(model, nnx.Param))
    assert jax.tree.leaves(after)[0].spec == P()
    assert jax.tree.structure(before) == jax.tree.structure(after)

    x = jnp.ones((8, 16))
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    assert model.kernel[...].sharding.spec == P()
