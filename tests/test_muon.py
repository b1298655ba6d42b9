"""Muon: Newton–Schulz orthogonalization, routing to AdamW, shape scaling, optax equality,
sharding. The 100-step trajectories per framework are in tests/test_conformance_muon.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj

MDN = aj.MuonDimensionNumbers


def _params(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return {
        "w0": jnp.asarray(rng.normal(size=(6, 12)), dtype),
        "w1": jnp.asarray(rng.normal(size=(12, 3)), dtype),
        "b": jnp.asarray(rng.normal(size=(5,)), dtype),
        "conv": jnp.asarray(rng.normal(size=(3, 4, 5)), dtype),
    }


def _run(tx, params, steps=4, update=None):
    state = tx.init(params)
    update = update or jax.jit(tx.update)
    for k in range(steps):
        g = jax.tree.map(lambda x, k=k: jnp.cos(x * (k + 1.0)) + 0.3 * x, params)
        u, state = update(g, state, params)
        params = aj.apply_updates(params, u)
    return params, state


# --------------------------------------------------------------------------- optax live

OPTAX_CASES = {
    "default": {},
    "weight_decay": dict(weight_decay=0.1, adam_weight_decay=0.05),
    "heavy_ball": dict(nesterov=False, beta=0.9),
    "consistent_rms": dict(consistent_rms=0.2),
    "dion": dict(ns_coeffs="dion"),
    "aol": dict(preconditioning="aol"),
    "schatten": dict(preconditioning="schatten"),
    "spectral": dict(preconditioning="spectral", ns_steps=3),
    "adaptive": dict(adaptive=True),
    "adam_rate": dict(adam_learning_rate=0.003, adam_b1=0.8),
    "dimension_numbers": dict(muon_weight_dimension_numbers={
        "w0": MDN(0, 1), "w1": MDN(0, 1), "b": None, "conv": MDN((0,), (2,))}),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_equals_optax_contrib_muon(x64, case):
    kwargs = OPTAX_CASES[case]
    optax_kwargs = dict(kwargs)
    if "muon_weight_dimension_numbers" in kwargs:  # optax's own class, for optax
        optax_kwargs["muon_weight_dimension_numbers"] = jax.tree.map(
            lambda d: optax.contrib.MuonDimensionNumbers(*d), kwargs[
                "muon_weight_dimension_numbers"], is_leaf=lambda x: isinstance(x, MDN))
    with jax.numpy_dtype_promotion("standard"):
        want, _ = _run(optax.contrib.muon(0.02, **optax_kwargs), _params())
    got, _ = _run(aj.muon(0.02, **kwargs), _params())
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_optax_dimension_numbers_class_is_accepted(x64):
    dims = {"w0": optax.contrib.MuonDimensionNumbers(0, 1), "w1": None, "b": None,
            "conv": optax.contrib.MuonDimensionNumbers(0, 2)}
    ours = {**dims, "w0": MDN(0, 1), "conv": MDN(0, 2)}
    a, _ = _run(aj.muon(0.02, muon_weight_dimension_numbers=dims), _params(), 2)
    b, _ = _run(aj.muon(0.02, muon_weight_dimension_numbers=ours), _params(), 2)
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------------- Newton–Schulz


def test_cubic_iteration_converges_to_the_polar_factor(x64):
    x = _params()["w0"]
    u, _, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    o = aj.orthogonalize(x, "cubic", 40)
    np.testing.assert_allclose(o, u @ vt, atol=1e-10)


def test_quintic_singular_values_and_transpose_symmetry(x64):
    x = _params()["w1"]
    o = aj.orthogonalize(x)
    sv = np.linalg.svd(np.asarray(o), compute_uv=False)
    assert 0.6 < sv.min() and sv.max() < 1.25, sv
    np.testing.assert_allclose(aj.orthogonalize(x.T), o.T, rtol=1e-13, atol=1e-15)
    # per-step coefficients: the same triple five times is the default
    np.testing.assert_array_equal(aj.orthogonalize(x, [(3.4445, -4.7750, 2.0315)] * 5), o)


def test_dimension_numbers_orthogonalize_each_batch_slice(x64):
    conv = _params()["conv"]  # (3, 4, 5): reduction 0, output 2, batch 1
    o = aj.orthogonalize(conv, dimension_numbers=MDN(0, 2))
    for j in range(conv.shape[1]):
        np.testing.assert_allclose(o[:, j, :], aj.orthogonalize(conv[:, j, :]), rtol=1e-13)
    # several reduction axes: an HWIO kernel is one (h*w*i, o) matrix
    k = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 3, 4)))
    o = aj.orthogonalize(k, dimension_numbers=MDN((0, 1, 2), 3))
    np.testing.assert_allclose(o.reshape(12, 4), aj.orthogonalize(k.reshape(12, 4)), rtol=1e-13)


def test_ns_dtype_and_eps_modes():
    x = _params(jnp.float32)["w0"]
    o16 = aj.orthogonalize(x, ns_dtype=jnp.bfloat16)
    assert o16.dtype == jnp.float32
    assert 1e-4 < float(jnp.abs(o16 - aj.orthogonalize(x)).max()) < 0.1
    tiny = jnp.full((2, 3), 1e-9, jnp.float32)   # norm below eps: "max" divides by eps
    c = 1e-9 / 1e-7                               # X = c * ones(2, 3), X X^T X = 6 c^3
    np.testing.assert_allclose(aj.orthogonalize(tiny, "cubic", 1, eps=1e-7, eps_mode="max"),
                               np.full((2, 3), 1.5 * c - 3 * c**3), rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ns_coeffs="nope"), "ns_coeffs"),
    (dict(ns_coeffs=(1.0, 2.0)), "ns_coeffs"),
    (dict(ns_steps=0), "ns_steps"),
    (dict(ns_coeffs="dion", ns_steps=6), "ns_coeffs"),
    (dict(preconditioning="svd"), "preconditioning"),
    (dict(eps=-1.0), "eps"),
    (dict(eps_mode="clip"), "eps_mode"),
    (dict(ns_dtype=jnp.int32), "ns_dtype"),
])
def test_orthogonalize_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aj.orthogonalize(jnp.ones((2, 3)), **kwargs)


def test_rank_3_without_dimension_numbers_raises():
    with pytest.raises(ValueError, match="dimension_numbers"):
        aj.orthogonalize(jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="disjoint"):
        aj.orthogonalize(jnp.ones((2, 3, 4)), dimension_numbers=MDN(1, -2))
    tx = aj.scale_by_muon()
    with pytest.raises(ValueError, match=r"\['v'\].*not a matrix"):
        tx.update({"v": jnp.ones(3)}, tx.init({"v": jnp.ones(3)}))


@pytest.mark.parametrize("kwargs, match", [
    (dict(momentum_form="heavy"), "momentum_form"),
    (dict(adjust_lr_fn="sqrt"), "adjust_lr_fn"),
    (dict(beta=1.0), "beta"),
    (dict(adam_b2=1.5), "adam_b2"),
    (dict(adam_weight_decay=-1.0), "adam_weight_decay"),
    (dict(nesterov="yes"), "nesterov"),
    (dict(exclude_layers=[3]), "exclude_layers"),
    (dict(convention="jax"), "convention"),
])
def test_muon_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aj.muon(0.02, **kwargs).init(_params())


# --------------------------------------------------------------------------- routing, rates


def _muon_leaves(state):
    return set(state.inner_states["muon"].inner_state[0].mu) - {
        k for k, m in state.inner_states["muon"].inner_state[0].mu.items()
        if isinstance(m, aj.MaskedNode)}


def test_routing_by_rank_name_and_dimension_numbers():
    params = {"dense": _params(jnp.float32)["w0"], "bias": jnp.zeros(12),
              "token_embedding": jnp.ones((10, 6)), "head": jnp.ones((12, 3)),
              "conv": jnp.ones((3, 3, 2, 4)), "step": jnp.zeros((2, 2), jnp.int32)}
    assert _muon_leaves(aj.muon(0.1).init(params)) == {"dense", "token_embedding", "head"}
    tx = aj.muon(0.1, exclude_layers=["^head$"], exclude_embeddings=True)
    assert _muon_leaves(tx.init(params)) == {"dense"}
    assert _muon_leaves(aj.muon(0.1, convention="keras").init(params)) == {"dense", "head"}
    dims = lambda p: {k: MDN((0, 1, 2), 3) if k == "conv" else None for k in p}
    assert _muon_leaves(aj.muon(0.1, muon_weight_dimension_numbers=dims).init(params)) == {
        "conv"}
    # state: one moment per matrix entry, two per AdamW entry (about half of Adam's bytes)
    mats = {"a": jnp.ones((64, 64)), "b": jnp.ones((64, 32)), "bias": jnp.ones(64)}
    ratio = aj.state_bytes(aj.muon(0.1).init(mats)) / aj.state_bytes(aj.adamw(0.1).init(mats))
    assert 0.5 < ratio < 0.52, ratio


@pytest.mark.parametrize("convention, scales", [
    ("optax", {"w0": 2**0.5, "w1": 1.0}),                # sqrt(max(1, out / in)), (in, out)
    ("torch", {"w0": 1.0, "w1": 2.0}),                   # torch reads (out, in)
    ("keras", {"w0": 0.2 * 12**0.5, "w1": 0.2 * 12**0.5}),  # rms 0.2 * sqrt(max)
])
def test_adjusted_learning_rate_is_reported(convention, scales):
    lr = aj.exponential_decay(0.1, 1, 0.5)
    tx = aj.muon(lr, convention=convention)
    params = {k: v for k, v in _params(jnp.float32).items() if k != "conv"}
    state = tx.init(params)
    for step in range(3):
        hp = aj.get_hyperparams(state)
        for k, s in scales.items():
            assert float(hp[f"adjusted_learning_rate['{k}']"]) == pytest.approx(
                0.1 * 0.5**max(step - 1, 0) * s, rel=1e-6), (step, k)
        _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    # a rate set between steps is used, and reported adjusted
    state = aj.set_hyperparams(aj.muon(0.1).init(params), learning_rate=0.05)
    u, state = aj.muon(0.1).update(jax.tree.map(jnp.ones_like, params), state, params)
    assert float(aj.get_hyperparams(state)["adjusted_learning_rate['w0']"]) == pytest.approx(
        0.05 * 2**0.5)


def test_flat_params_have_no_matrix_and_go_to_adamw():
    """Documented: flat buffers are 1-D, so Muon sees no matrix (flat mode unsupported)."""
    flat, _ = aj.flatten_params({"w": jnp.ones((4, 3)), "b": jnp.ones(3)})
    assert not _muon_leaves(aj.muon(0.1).init(flat))


# --------------------------------------------------------------------------- composition


def test_works_in_make_step_and_wrappers():
    params = {k: v for k, v in _params(jnp.float32).items() if k != "conv"}
    reference, _ = _run(aj.muon(0.02), params, 4)
    for wrap in (lambda tx: tx, aj.skip_non_finite):
        tx = wrap(aj.muon(0.02))
        step = aj.make_step(tx)
        p = jax.tree.map(jnp.copy, params)  # make_step donates
        s = tx.init(p)
        for k in range(4):
            g = jax.tree.map(lambda x, k=k: jnp.cos(x * (k + 1.0)) + 0.3 * x, p)
            p, s = step(p, s, g)
        for key in params:
            np.testing.assert_allclose(p[key], reference[key], rtol=2e-6, atol=1e-7)
    # a non-finite gradient is skipped, leaving params and momentum untouched
    tx = aj.skip_non_finite(aj.muon(0.02))
    s = tx.init(params)
    bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    u, s2 = tx.update(bad, s, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    # gradient accumulation: two half-steps equal one full step
    acc = aj.accumulate_gradients(aj.muon(0.02), every_k=2)
    g = jax.tree.map(jnp.cos, params)
    s = acc.init(params)
    _, s = acc.update(g, s, params)
    u_acc, _ = acc.update(g, s, params)
    u_one, _ = aj.muon(0.02).update(g, aj.muon(0.02).init(params), params)
    for key in params:
        np.testing.assert_allclose(u_acc[key], u_one[key], rtol=1e-5, atol=1e-7)


def test_sharded_matrices_equal_one_device_and_use_collectives(x64):
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = np.array(jax.devices()[:8])
    assert devices.size == 8
    mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(16, 32))),
              "v": jnp.asarray(rng.normal(size=(32, 8))), "b": jnp.asarray(rng.normal(size=32))}
    tx = aj.muon(0.02, weight_decay=0.1)
    want, _ = _run(tx, params, 3)
    shardings = {"w": NamedSharding(mesh, P("data", "model")),
                 "v": NamedSharding(mesh, P("model", None)), "b": NamedSharding(mesh, P("model"))}
    sharded = jax.device_put(params, shardings)
    update = jax.jit(tx.update)
    got, state = _run(tx, sharded, 3, update)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-13, err_msg=k)
        assert got[k].sharding.is_equivalent_to(shardings[k], got[k].ndim)
    hlo = update.lower(sharded, state, sharded).compile().as_text()
    assert "all-reduce" in hlo or "all-gather" in hlo


def test_training_a_small_mlp_with_muon_on_matrices():
    """Muon on the matrices and AdamW on the biases fits a teacher MLP (quick check;
    benchmarks/muon_step_time.py compares with AdamW at equal steps)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(128, 16)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y = jnp.tanh(x @ teacher)
    params = {"w0": jnp.asarray(rng.normal(size=(16, 32)) / 4, jnp.float32),
              "b0": jnp.zeros(32), "w1": jnp.asarray(rng.normal(size=(32, 4)) / 6, jnp.float32),
              "b1": jnp.zeros(4)}

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"] - y) ** 2)

    tx = aj.muon(0.02, adam_learning_rate=0.01)
    step = aj.make_step(tx)
    p = jax.tree.map(jnp.copy, params)  # make_step donates
    s = tx.init(p)
    for _ in range(150):
        p, s = step(p, s, jax.grad(loss)(p))
    assert float(loss(p)) < 0.1 * float(loss(params))


def test_pmap_and_inject_hyperparams():
    """Under pmap (params replicated on 2 devices, gradients averaged) the step equals one
    device; optax's inject_hyperparams passes the numbers as arrays, under jit."""
    params = {k: v for k, v in _params(jnp.float32).items() if k != "conv"}
    g = jax.tree.map(jnp.cos, params)
    tx = aj.muon(0.02, weight_decay=0.1)
    want, _ = tx.update(g, tx.init(params), params)
    rep = lambda t: jax.tree.map(lambda x: jnp.stack([x, x]), t)
    step = jax.pmap(lambda g, s, p: tx.update(jax.lax.pmean(g, "d"), s, p), axis_name="d",
                    devices=jax.devices()[:2])
    got, _ = step(rep(g), rep(tx.init(params)), rep(params))
    for k in want:
        np.testing.assert_allclose(got[k][1], want[k], rtol=1e-5, atol=1e-7)
    with jax.numpy_dtype_promotion("standard"):
        injected = optax.inject_hyperparams(aj.muon, static_args=("ns_steps",))(
            learning_rate=0.02, weight_decay=0.1)
        u, _ = jax.jit(injected.update)(g, injected.init(params), params)
    for k in want:
        np.testing.assert_allclose(u[k], want[k], rtol=1e-5, atol=1e-7)


def test_benchmark_quick_runs(tmp_path):
    """benchmarks/muon_step_time.py --quick runs (tiny sizes, no timing assertions)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "muon.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "muon_step_time.py"), "--quick",
         "--json", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {r["optimizer"] for r in results["step_time"]} == {
        "aj.muon", "optax.contrib.muon", "aj.adamw"}
    assert results["sharding"]["columns"]["collectives"] == {"all-reduce": 6}
    assert all(d["max_abs_diff"] < 1e-12 for d in results["sharding"].values())
    assert set(results["train"]) == {"muon", "adamw"}


def test_scale_by_shape_blocks():
    params = {"w": jnp.ones((2, 8)), "v": jnp.ones(3)}
    u, state = aj.scale_by_shape().update(params, aj.scale_by_shape().init(params))
    np.testing.assert_allclose(u["w"], 2.0)  # sqrt(8 / 2)
    np.testing.assert_allclose(u["v"], 1.0)  # not a matrix: unscaled
    tx = aj.scale_by_shape(consistent_rms=0.5, learning_rate=0.1)
    u, state = tx.update(params, tx.init(params))
    np.testing.assert_allclose(u["w"], -0.1 * 0.5 * 8**0.5, rtol=1e-6)
    np.testing.assert_allclose(u["v"], -0.1, rtol=1e-6)
    assert set(aj.get_hyperparams(state)) == {"learning_rate", "adjusted_learning_rate['w']"}
