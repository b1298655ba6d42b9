"""The replay machinery of the conformance tests (a plain module: no tests here).

A *reference* runs closed loop for ``STEPS`` steps on two problems of
tests/problems.py (the ill-conditioned rotated quadratic, a vector leaf, and the
small tanh MLP, two matrices and two biases), recording the gradient of every step
and the params after it:

* ``"optax"``: optax itself, live (under standard dtype promotion, which optax
  needs), built by ``OPTAX[optimizer](variant, lr)``;
* an ecosystem with a NumPy transcription in ``NUMPY[(ecosystem, optimizer)]``
  (Keras 3's update rules, tests/reference_keras.py), fed JAX-computed gradients;
* any other ecosystem: the golden trajectory ``tests/reference/<ecosystem>_<id>.npz``
  (torch.optim, or another PyTorch reference such as ``schedulefree``), written by
  a script in ``scripts/``.

:func:`ours` then *replays* the reference's gradients through the accel_jax call of
the cell (one jitted step, one compilation) and :func:`assert_close` compares the
params after every recorded step. Replaying isolates the optimizer: rounding
differences cannot be amplified by the problem's dynamics, so tight tolerances hold
for 100 steps. Weight decay reads our own params, which match the reference's.

A family's test module declares its variants, registers them and its references,
and parametrizes one test over :func:`cells`::

    VARIANTS = [c.variant("lion", "default", ecosystems=("optax",), lr=1e-3)]
    c.register(VARIANTS)
    c.OPTAX["lion"] = lambda v, lr: optax.lion(lr, **v.kwargs)

    @pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", c.cells(VARIANTS))
    def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
        c.check_cell(request, variant_id, ecosystem, problem, dtype)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from tests import problems

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
    """One optimizer configuration, tested against each of its ``ecosystems``.

    ``spec`` holds the learning rate ``lr``, optionally ``decay`` (the rate of step
    ``k`` is ``lr * decay**k``, k = 0, 1, ...) and the optimizer's arguments, the same
    for every ecosystem; everything else is each ecosystem's default.
    """

    optimizer: str
    name: str
    spec: tuple
    ecosystems: tuple = ECOSYSTEMS

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


def variant(optimizer: str, name: str, *, ecosystems: tuple = ECOSYSTEMS, **spec) -> Variant:
    return Variant(optimizer, name, tuple(spec.items()), tuple(ecosystems))


#: Every registered variant, by id.
BY_ID: dict[str, Variant] = {}
#: optimizer -> ``fn(variant, lr) -> optax.GradientTransformation`` (the optax reference).
OPTAX: dict[str, Callable] = {}
#: (ecosystem, optimizer) -> NumPy reference class ``cls(lr_fn, **kwargs)`` with ``apply``.
NUMPY: dict[tuple[str, str], type] = {}


def register(variants: list[Variant]) -> None:
    for v in variants:
        if BY_ID.get(v.id, v) != v:
            raise ValueError(f"variant id {v.id} registered twice with different specs")
        BY_ID[v.id] = v


def cells(variants: list[Variant]) -> list:
    """One pytest param per (variant, ecosystem, problem, dtype)."""
    return [
        pytest.param(v.id, eco, problem, dtype, id=f"{v.id}-{eco}-{problem}-{dtype}")
        for v in variants
        for eco in v.ecosystems
        for problem in PROBLEMS
        for dtype in DTYPES
    ]


# --------------------------------------------------------------------------- references


def init_params() -> dict[str, np.ndarray]:
    """The starting params of both problems, float64, keyed ``problem/leaf``."""
    q, m = problems.rotated_quadratic(), problems.small_mlp()
    return {"quadratic/x": q["x0"], **{f"mlp/{k}": m[k] for k in problems.MLP_PARAM_NAMES}}


def problem_of(key: str) -> str:
    return key.split("/", 1)[0]


@functools.cache
def grad_fn(dtype: str):
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


def learning_rate(v: Variant, dtype: str):
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


def stack(steps: list[dict]) -> dict:
    """A list of per-step dicts of arrays -> a dict of NumPy arrays stacked on axis 0."""
    return {k: np.stack([np.asarray(t[k]) for t in steps]) for k in steps[0]}


def _optax_trajectory(v: Variant, dtype: str) -> Trajectory:
    import optax

    init = {k: jnp.asarray(p, dtype) for k, p in init_params().items()}
    grads_of = grad_fn(dtype)
    with jax.numpy_dtype_promotion("standard"):
        tx = OPTAX[v.optimizer](v, learning_rate(v, dtype))

        @jax.jit
        def step(p, s):
            g = grads_of(p)
            u, s = tx.update(g, s, p)
            return g, optax.apply_updates(p, u), s

        params, state, grads, trajectory = init, tx.init(init), [], []
        for _ in range(STEPS):
            g, params, state = step(params, state)
            grads.append(g)
            trajectory.append(params)
    init = {k: np.asarray(x) for k, x in init.items()}
    return Trajectory(init, stack(grads), stack(trajectory), np.arange(1, STEPS + 1))


def _numpy_trajectory(v: Variant, ecosystem: str, dtype: str) -> Trajectory:
    init = {k: p.astype(dtype) for k, p in init_params().items()}
    lrs = v.learning_rates()
    opt = NUMPY[(ecosystem, v.optimizer)](lambda k: float(lrs[k]), **v.kwargs)
    grads_of = grad_fn(dtype)
    params, grads, trajectory = init, [], []
    for _ in range(STEPS):
        g = {k: np.asarray(x) for k, x in grads_of(params).items()}
        params = opt.apply(g, params)
        grads.append(g)
        trajectory.append(params)
    return Trajectory(init, stack(grads), stack(trajectory), np.arange(1, STEPS + 1))


def golden_file(v: Variant, ecosystem: str) -> pathlib.Path:
    return REFERENCE / f"{ecosystem}_{v.id}.npz"


def _golden_trajectory(v: Variant, ecosystem: str, dtype: str) -> Trajectory:
    with np.load(golden_file(v, ecosystem)) as data:
        leaves = [k for k in init_params() if f"{dtype}/{k}/init" in data]
        part = lambda kind: {k: data[f"{dtype}/{k}/{kind}"] for k in leaves}
        return Trajectory(part("init"), part("grads"), part("params"), data["steps"])


@functools.cache
def reference(variant_id: str, ecosystem: str, dtype: str) -> Trajectory:
    """The reference trajectory of a cell (computed once per session)."""
    v = BY_ID[variant_id]
    if ecosystem == "optax":
        return _optax_trajectory(v, dtype)
    if (ecosystem, v.optimizer) in NUMPY:
        return _numpy_trajectory(v, ecosystem, dtype)
    return _golden_trajectory(v, ecosystem, dtype)


def make(v: Variant, convention: str, dtype: str):
    """The accel_jax transformation of the cell."""
    return getattr(aj, v.optimizer)(learning_rate(v, dtype), **v.kwargs, convention=convention)


@functools.cache
def ours(variant_id: str, convention: str, dtype: str, source: str) -> dict:
    """accel_jax's params after each recorded step of ``source``'s gradients."""
    v = BY_ID[variant_id]
    ref = reference(variant_id, source, dtype)
    tx = make(v, convention, dtype)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return aj.apply_updates(p, u), s

    # A Python loop over a jitted step compiles faster than a scan over the steps.
    params, state, trajectory = ref.init, tx.init(ref.init), []
    for k in range(STEPS):
        params, state = step(params, state, {n: g[k] for n, g in ref.grads.items()})
        trajectory.append(params)
    return {n: x[ref.steps - 1] for n, x in stack(trajectory).items()}


# --------------------------------------------------------------------------- comparison


def excess(ours: dict, ref: Trajectory, problem: str, dtype: str) -> dict:
    """Per leaf: ``|ours - ref| / (ATOL * scale + RTOL * |ref|)`` (<= 1 passes)."""
    leaves = [k for k in ref.init if problem_of(k) == problem]
    scale = max(np.abs(ref.init[k]).max() for k in leaves)
    out = {}
    for k in leaves:
        r, o = ref.params[k].astype(np.float64), ours[k].astype(np.float64)
        out[k] = np.abs(o - r) / (ATOL[dtype] * scale + RTOL[dtype] * np.abs(r))
    return out


def assert_close(ours: dict, ref: Trajectory, problem: str, dtype: str, label: str) -> None:
    found = excess(ours, ref, problem, dtype)
    assert found, f"{label}: the reference has no leaf of problem {problem}"
    for k, ratio in found.items():
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


def check_cell(request, variant_id: str, ecosystem: str, problem: str, dtype: str) -> None:
    """The cell's accel_jax call reproduces the ecosystem's trajectory, step by step."""
    if dtype == "float64":
        request.getfixturevalue("x64")
    ref = reference(variant_id, ecosystem, dtype)
    assert len(next(iter(ref.grads.values()))) >= STEPS
    result = ours(variant_id, ecosystem, dtype, ecosystem)
    assert_close(result, ref, problem, dtype, BY_ID[variant_id].call(ecosystem))


def check_golden_meta(variant_id: str, ecosystem: str) -> dict:
    """The golden file was made for this variant, these rates and these problems.

    Returns the file's ``meta`` (a dict) for further checks.
    """
    v = BY_ID[variant_id]
    with np.load(golden_file(v, ecosystem)) as data:
        meta = json.loads(str(data["meta"]))
        assert meta["spec"] == dict(v.spec)
        assert meta["steps"] >= STEPS
        np.testing.assert_array_equal(data["lrs"], v.learning_rates())
        found = 0
        for k, p in init_params().items():
            if f"float64/{k}/init" not in data:
                continue
            found += 1
            np.testing.assert_array_equal(data[f"float64/{k}/init"], p)
            np.testing.assert_array_equal(data[f"float32/{k}/init"], p.astype(np.float32))
        assert found, f"{golden_file(v, ecosystem).name} holds no known leaf"
    return meta


def missing_from_docs(variants: list[Variant]) -> list[str]:
    """The cells' accel_jax calls that docs/conformance.md does not give."""
    text = (ROOT / "docs" / "conformance.md").read_text()
    return [v.call(eco) for v in variants for eco in v.ecosystems if v.call(eco) not in text]
