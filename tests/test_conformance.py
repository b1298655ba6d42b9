"""Numerical conformance: every optimizer x ecosystem cell of docs/conformance.md.

A *reference* runs closed loop for 100 steps on two problems of tests/problems.py
(the ill-conditioned rotated quadratic and the small tanh MLP), recording the
gradient of every step and the params after it:

* optax: optax itself, live (under standard dtype promotion, which optax needs);
* torch.optim 2.x: the golden trajectories in tests/reference/torch_*.npz, written
  by scripts/make_torch_goldens.py (torch is not a test dependency);
* Keras 3: the NumPy transcription of Keras' update rules in tests/reference_keras.py,
  fed JAX-computed gradients.

The test then *replays* the reference's gradients through the accel_jax call of the
cell (one jitted step, one compilation) and compares the params after every
recorded step. Replaying isolates the optimizer: rounding differences cannot be
amplified by the problem's dynamics, so tight tolerances hold for 100 steps.
Weight decay reads our own params, which match the reference's.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import problems
from tests import reference_keras as keras

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
STEPS = 100
ECOSYSTEMS = ("optax", "torch", "keras")
PROBLEMS = ("quadratic", "mlp")
DTYPES = ("float32", "float64")
RTOL = {"float32": 1e-5, "float64": 1e-10}
# Passing: ``|ours - ref| <= ATOL * scale + RTOL * |ref|``, ``scale`` the largest
# initial |param| of the problem. The atol is for entries that end up small after
# travelling far (or through zero): each step leaves an error proportional to the
# step, not to the entry. float64: a few ulps per step, at most 1.2e-15 * scale here;
# 1e-14 bounds it with margin. float32: the references themselves disagree by up to
# 3e-6 * scale here (optax's and Keras' Adam family form ``1 - b2**t`` from b2 rounded
# to float32, torch.optim in float64: 6e-6 relatively apart in every step, see
# docs/conformance.md), so no implementation is within 1.5e-6 * scale of all of them;
# 5e-6 bounds that with margin. Entries above ATOL/RTOL = 0.5 (float32), 1e-4
# (float64) times the scale are held to the relative tolerance alone.
ATOL = {"float32": 5e-6, "float64": 1e-14}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One optimizer configuration, tested against each ecosystem.

    ``spec`` holds the learning rate ``lr``, optionally ``decay`` (the rate of step
    ``k`` is ``lr * decay**k``, k = 0, 1, ...) and the optimizer's arguments, the same
    for every ecosystem; everything else is each ecosystem's default.
    """

    optimizer: str
    name: str
    spec: tuple

    @property
    def id(self) -> str:
        return f"{self.optimizer}_{self.name}"

    @property
    def kwargs(self) -> dict:
        return {k: v for k, v in self.spec if k not in ("lr", "decay")}

    def learning_rates(self) -> np.ndarray:
        """The rate of every step, in float64 (as torch's Python floats)."""
        spec = dict(self.spec)
        return spec["lr"] * spec.get("decay", 1.0) ** np.arange(STEPS, dtype=np.float64)

    def call(self, ecosystem: str) -> str:
        """The accel_jax call of the cell, as docs/conformance.md writes it."""
        args = ["lr", *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        return f'aj.{self.optimizer}({", ".join(args)}, convention="{ecosystem}")'


def _variant(optimizer, name, **spec):
    return Variant(optimizer, name, tuple(spec.items()))


# At least one variant per optimizer has a changing learning rate (``decay``).
VARIANTS = [
    _variant("sgd", "plain", lr=0.01),
    _variant("sgd", "momentum", lr=0.01, decay=0.98, momentum=0.9),
    _variant("sgd", "nesterov", lr=0.01, decay=0.98, momentum=0.9, nesterov=True),
    _variant("sgd", "weight_decay", lr=0.01, weight_decay=0.1),
    _variant("sgd", "momentum_weight_decay", lr=0.01, decay=0.98, momentum=0.9,
             weight_decay=0.1),
    _variant("adagrad", "default", lr=0.1, decay=0.98),
    _variant("rmsprop", "plain", lr=0.01),
    _variant("rmsprop", "centered", lr=0.01, centered=True),
    _variant("rmsprop", "momentum", lr=0.01, decay=0.98, momentum=0.9),
    _variant("rmsprop", "centered_momentum", lr=0.01, decay=0.98, centered=True, momentum=0.9),
    _variant("adam", "plain", lr=0.02),
    _variant("adam", "amsgrad", lr=0.02, decay=0.98, amsgrad=True),
    _variant("adamw", "default", lr=0.02, decay=0.98),
    _variant("adamax", "default", lr=0.02, decay=0.98),
    _variant("nadam", "default", lr=0.02, decay=0.98),
]
BY_ID = {v.id: v for v in VARIANTS}

# Ecosystems whose defaults give the same trajectory for a variant (the others differ).
SAME_TRAJECTORY = {
    "sgd_plain": [("optax", "torch", "keras")],
    "sgd_momentum": [("optax", "torch")],
    "sgd_nesterov": [("optax", "torch")],
    # without momentum, coupled L2 and decoupled decay are the same step
    "sgd_weight_decay": [("optax", "torch", "keras")],
    "sgd_momentum_weight_decay": [("optax", "torch")],
    "adagrad_default": [("optax", "keras")],
    "adam_plain": [("optax", "torch")],
    "adamax_default": [("optax", "torch")],
}


# --------------------------------------------------------------------------- references


def _optax_reference(v: Variant, lr):
    k = v.kwargs
    if v.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=k.get("momentum"), nesterov=k.get("nesterov", False))
        if "weight_decay" in k:  # optax's L2: the decay added to the gradient, first
            tx = optax.chain(optax.add_decayed_weights(k["weight_decay"]), tx)
        return tx
    if v.optimizer == "rmsprop":
        return optax.rmsprop(lr, centered=k.get("centered", False), momentum=k.get("momentum"))
    if v.optimizer == "adam" and k.get("amsgrad"):
        return optax.amsgrad(lr)
    assert not k, k
    return getattr(optax, v.optimizer)(lr)


KERAS = {
    "sgd": keras.SGD, "adagrad": keras.Adagrad, "rmsprop": keras.RMSprop, "adam": keras.Adam,
    "adamw": keras.AdamW, "adamax": keras.Adamax, "nadam": keras.Nadam,
}


def _init_params() -> dict[str, np.ndarray]:
    """The starting params of both problems, float64, keyed ``problem/leaf``."""
    q, m = problems.rotated_quadratic(), problems.small_mlp()
    return {"quadratic/x": q["x0"], **{f"mlp/{k}": m[k] for k in problems.MLP_PARAM_NAMES}}


def _problem_of(key: str) -> str:
    return key.split("/", 1)[0]


@functools.cache
def _grad_fn(dtype: str):
    """The gradient of both problems' losses (one sum: the problems share no param)."""
    q, m = problems.rotated_quadratic(), problems.small_mlp()
    a, b = jnp.asarray(q["A"], dtype), jnp.asarray(q["b"], dtype)
    x, y = jnp.asarray(m["X"], dtype), jnp.asarray(m["Y"], dtype)

    def loss(p):
        mlp = {k: p[f"mlp/{k}"] for k in problems.MLP_PARAM_NAMES}
        return problems.quadratic_loss({"x": p["quadratic/x"]}, a, b) + problems.mlp_loss(
            mlp, x, y
        )

    return jax.jit(jax.grad(loss))


def _learning_rate(v: Variant, dtype: str):
    """A float, or a schedule looking the float64 rates up (rounded once to ``dtype``)."""
    lrs = v.learning_rates()
    if "decay" not in dict(v.spec):
        return float(lrs[0])
    table = jnp.asarray(lrs.astype(dtype))
    return lambda count: table[count]


@dataclasses.dataclass
class Trajectory:
    init: dict  # leaf -> (shape)
    grads: dict  # leaf -> (STEPS, shape): the gradient of every step
    params: dict  # leaf -> (len(steps), shape): the params after each recorded step
    steps: np.ndarray  # the recorded steps, 1-based


def _stack(steps: list[dict]) -> dict:
    """A list of per-step dicts of arrays -> a dict of NumPy arrays stacked on axis 0."""
    return {k: np.stack([np.asarray(t[k]) for t in steps]) for k in steps[0]}


def _optax_trajectory(v: Variant, dtype: str) -> Trajectory:
    init = {k: jnp.asarray(p, dtype) for k, p in _init_params().items()}
    grad_fn = _grad_fn(dtype)
    with jax.numpy_dtype_promotion("standard"):
        tx = _optax_reference(v, _learning_rate(v, dtype))

        @jax.jit
        def step(p, s):
            g = grad_fn(p)
            u, s = tx.update(g, s, p)
            return g, optax.apply_updates(p, u), s

        params, state, grads, trajectory = init, tx.init(init), [], []
        for _ in range(STEPS):
            g, params, state = step(params, state)
            grads.append(g)
            trajectory.append(params)
    init = {k: np.asarray(x) for k, x in init.items()}
    return Trajectory(init, _stack(grads), _stack(trajectory), np.arange(1, STEPS + 1))


def _keras_trajectory(v: Variant, dtype: str) -> Trajectory:
    init = {k: p.astype(dtype) for k, p in _init_params().items()}
    lrs = v.learning_rates()
    opt = KERAS[v.optimizer](lambda k: float(lrs[k]), **v.kwargs)
    grad_fn = _grad_fn(dtype)
    params, grads, trajectory = init, [], []
    for _ in range(STEPS):
        g = {k: np.asarray(x) for k, x in grad_fn(params).items()}
        params = opt.apply(g, params)
        grads.append(g)
        trajectory.append(params)
    return Trajectory(init, _stack(grads), _stack(trajectory), np.arange(1, STEPS + 1))


def _torch_file(v: Variant) -> pathlib.Path:
    return REFERENCE / f"torch_{v.id}.npz"


def _torch_trajectory(v: Variant, dtype: str) -> Trajectory:
    with np.load(_torch_file(v)) as data:
        part = lambda kind: {k: data[f"{dtype}/{k}/{kind}"] for k in _init_params()}
        return Trajectory(part("init"), part("grads"), part("params"), data["steps"])


@functools.cache
def _reference(variant_id: str, ecosystem: str, dtype: str) -> Trajectory:
    v = BY_ID[variant_id]
    make = {"optax": _optax_trajectory, "torch": _torch_trajectory, "keras": _keras_trajectory}
    return make[ecosystem](v, dtype)


@functools.cache
def _ours(variant_id: str, convention: str, dtype: str, source: str) -> dict:
    """accel_jax's params after each recorded step of ``source``'s gradients."""
    v = BY_ID[variant_id]
    ref = _reference(variant_id, source, dtype)
    tx = getattr(aj, v.optimizer)(_learning_rate(v, dtype), **v.kwargs, convention=convention)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return aj.apply_updates(p, u), s

    # A Python loop over a jitted step compiles faster than a scan over the steps.
    params, state, trajectory = ref.init, tx.init(ref.init), []
    for k in range(STEPS):
        params, state = step(params, state, {n: g[k] for n, g in ref.grads.items()})
        trajectory.append(params)
    return {n: x[ref.steps - 1] for n, x in _stack(trajectory).items()}


# --------------------------------------------------------------------------- comparison


def _excess(ours: dict, ref: Trajectory, problem: str, dtype: str):
    """Per leaf: ``|ours - ref| / (ATOL * scale + RTOL * |ref|)`` (<= 1 passes)."""
    leaves = [k for k in ref.init if _problem_of(k) == problem]
    scale = max(np.abs(ref.init[k]).max() for k in leaves)
    out = {}
    for k in leaves:
        r, o = ref.params[k].astype(np.float64), ours[k].astype(np.float64)
        out[k] = np.abs(o - r) / (ATOL[dtype] * scale + RTOL[dtype] * np.abs(r))
    return out


def _assert_close(ours: dict, ref: Trajectory, problem: str, dtype: str, label: str):
    for k, ratio in _excess(ours, ref, problem, dtype).items():
        ratio = np.nan_to_num(ratio, nan=np.inf)
        if (ratio > 1).any():
            i = np.unravel_index(np.argmax(ratio), ratio.shape)
            pytest.fail(
                f"{label}: {k} differs after step {ref.steps[i[0]]} at index "
                f"{tuple(int(j) for j in i[1:])}: "
                f"accel_jax {ours[k][i]!r}, reference {ref.params[k][i]!r} "
                f"({ratio[i]:.3g} x the tolerance rtol={RTOL[dtype]}, "
                f"atol={ATOL[dtype]} x scale)"
            )


CELLS = [
    pytest.param(v.id, eco, problem, dtype, id=f"{v.id}-{eco}-{problem}-{dtype}")
    for v in VARIANTS
    for eco in ECOSYSTEMS
    for problem in PROBLEMS
    for dtype in DTYPES
]


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", CELLS)
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    """The cell's accel_jax call reproduces the ecosystem's trajectory, step by step."""
    if dtype == "float64":
        request.getfixturevalue("x64")
    ref = _reference(variant_id, ecosystem, dtype)
    assert len(ref.grads["quadratic/x"]) >= STEPS
    ours = _ours(variant_id, ecosystem, dtype, ecosystem)
    _assert_close(ours, ref, problem, dtype, BY_ID[variant_id].call(ecosystem))


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS])
def test_each_convention_difference_is_visible(x64, variant_id):
    """The problems exercise every convention: where two ecosystems' defaults differ,
    accel_jax with one convention misses the other's torch-fed trajectory by far more
    than the float64 tolerance (so a wrong convention cannot pass), and where they
    coincide it matches. Fed torch's float64 gradients."""
    ref = _reference(variant_id, "torch", "float64")
    ours = {c: _ours(variant_id, c, "float64", "torch") for c in ECOSYSTEMS}
    same = {frozenset(p) for group in SAME_TRAJECTORY.get(variant_id, [])
            for p in itertools.combinations(group, 2)}
    for a, b in itertools.combinations(ECOSYSTEMS, 2):
        traj_b = dataclasses.replace(ref, params=ours[b])
        worst = max(
            r.max() for problem in PROBLEMS
            for r in _excess(ours[a], traj_b, problem, "float64").values()
        )
        if frozenset((a, b)) in same:
            assert worst <= 1, f"{variant_id}: {a} and {b} should coincide ({worst:.3g})"
        else:
            assert worst > 1e3, f"{variant_id}: {a} vs {b} differ only {worst:.3g} x tol"


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS])
def test_torch_goldens_match_the_registry(variant_id):
    """Each golden file was made for this variant, these rates and these problems."""
    v = BY_ID[variant_id]
    with np.load(_torch_file(v)) as data:
        meta = json.loads(str(data["meta"]))
        assert meta["spec"] == dict(v.spec)
        assert meta["steps"] >= STEPS and meta["torch_version"].startswith("2.")
        np.testing.assert_array_equal(data["lrs"], v.learning_rates())
        for k, p in _init_params().items():
            np.testing.assert_array_equal(data[f"float64/{k}/init"], p)
            np.testing.assert_array_equal(data[f"float32/{k}/init"], p.astype(np.float32))


def test_docs_list_every_cell():
    """docs/conformance.md gives the exact accel_jax call of every tested cell."""
    text = (ROOT / "docs" / "conformance.md").read_text()
    missing = [v.call(eco) for v in VARIANTS for eco in ECOSYSTEMS if v.call(eco) not in text]
    assert not missing, f"docs/conformance.md lacks: {missing}"
