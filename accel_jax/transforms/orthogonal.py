"""Orthogonalized updates (Muon): Newton–Schulz orthogonalization and Muon's momentum.

A *matrix* leaf is orthogonalized as a whole: ``O = NS(M)`` maps ``M = U S V^T`` to
approximately ``U V^T``. Which axes form the matrix is given per leaf by
:class:`MuonDimensionNumbers` (optax's meaning): the reduction (fan-in) axes and the
output (fan-out) axes; every other axis is a batch axis, each slice orthogonalized
on its own. Leaves of rank 2 default to ``MuonDimensionNumbers(0, 1)`` (a JAX/Flax
``(in, out)`` kernel).

Sharding: the orthogonalization is a global operation on the matrix. Under
``jax.jit`` with a sharded matrix XLA partitions the matmuls; the result equals the
single-device one up to the summation order. Per Newton–Schulz step on an ``(m, n)``
matrix (``m <= n`` after the transpose to the wide orientation, ``2 (2 m^2 n + m^3)``
flops), a matrix sharded along ``n`` needs one all-reduce of the ``m x m`` Gram
matrix (``X X^T`` sums over the sharded axis; the products with ``X`` stay local),
plus a scalar all-reduce for the norm; sharded along ``m``, XLA all-gathers the
matrix for the products (3 all-gathers per step). Shard matrices along their long
axis. ``benchmarks/RESULTS.md`` ("Muon against AdamW") counts the collectives of a
compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_structure,
    compute_dtype,
    needs_params_tree,
)
from accel_jax.combine import MaskedNode
from accel_jax.hyperparams import current_hyperparams, increment, init_state
from accel_jax.transforms.adaptive import bias_correction

#: Newton–Schulz coefficient presets ``(a, b, c)`` of ``X <- a X + (b A + c A^2) X``,
#: ``A = X X^T``: "standard" / "muon" is Keller Jordan's quintic (torch.optim.Muon, Keras,
#: optax); "dion" the five per-step quintics of Ahn et al. 2025 (as optax); "cubic" the
#: classical iteration ``1.5 X - 0.5 X X^T X``, which converges to ``U V^T`` exactly.
NS_COEFFS_PRESETS: dict[str, Any] = {
    "standard": (3.4445, -4.7750, 2.0315),
    "muon": (3.4445, -4.7750, 2.0315),
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
    "cubic": (1.5, -0.5, 0.0),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
EPS_MODES = ("add", "max")
MOMENTUM_FORMS = ("debiased", "ema", "sum")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the matrix (optax.contrib.MuonDimensionNumbers' meaning).

    ``reduction_axis`` (fan-in) and ``output_axis`` (fan-out) are an axis or a tuple
    of axes (negative allowed); the matrix is ``(prod reduction, prod output)``; all
    other axes are batch axes. A Flax ``Conv`` kernel ``(h, w, in, out)`` is
    ``MuonDimensionNumbers((0, 1, 2), 3)``; a torch ``Linear`` weight ``(out, in)``
    is ``MuonDimensionNumbers(1, 0)``; per-head attention ``(in, heads, d)``:
    ``MuonDimensionNumbers(0, 2)`` orthogonalizes each head alone. optax's own
    class is accepted wherever this one is.
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


def is_dimension_numbers(x: Any) -> bool:
    return isinstance(x, (MuonDimensionNumbers, optax.contrib.MuonDimensionNumbers))


def resolve_ns_coeffs(ns_coeffs: Any, ns_steps: int) -> tuple[tuple[float, float, float], ...]:
    """The ``(a, b, c)`` of every step: a preset name, one triple (every step) or triples.

    Given more triples than ``ns_steps``, the last ``ns_steps`` are used (as optax).
    """
    v.check_number("ns_steps", ns_steps, lo=1, hi=100, integer=True)
    if isinstance(ns_coeffs, str):
        v.check_choice("ns_coeffs", ns_coeffs, tuple(NS_COEFFS_PRESETS))
        ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    arr = np.asarray(ns_coeffs, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[-1] != 3 or not np.isfinite(arr).all():
        raise ValueError(
            f"ns_coeffs must be a preset {tuple(NS_COEFFS_PRESETS)}, a triple (a, b, c) or a "
            f"sequence of triples of finite numbers, got {ns_coeffs!r}."
        )
    if arr.ndim == 1:
        return tuple(tuple(float(c) for c in arr) for _ in range(int(ns_steps)))
    if arr.shape[0] < ns_steps:
        raise ValueError(f"ns_coeffs has {arr.shape[0]} triples, fewer than ns_steps={ns_steps}.")
    return tuple(tuple(float(c) for c in row) for row in arr[arr.shape[0] - int(ns_steps):])


def _axes(x: jax.Array, dims: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Normalized (batch, reduction, output) axes of ``x`` under ``dims``."""
    as_tuple = lambda a: (a,) if isinstance(a, int) else tuple(a)
    red = tuple(a % x.ndim for a in as_tuple(dims.reduction_axis))
    out = tuple(a % x.ndim for a in as_tuple(dims.output_axis))
    if not red or not out or set(red) & set(out) or len(set(red + out)) != len(red + out):
        raise ValueError(
            f"weight dimension numbers must name disjoint, non-empty reduction and output axes, "
            f"got {dims} for shape {x.shape}."
        )
    batch = tuple(a for a in range(x.ndim) if a not in red + out)
    return batch, red, out


def fans(x: jax.Array, dims: Any) -> tuple[int, int]:
    """``(fan_in, fan_out)``: the sizes of the reduction and output axes of ``x``."""
    _, red, out = _axes(x, dims)
    return math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out)


def _ns_matrix(x, coeffs, eps, eps_mode, preconditioning, norm_dtype=None):
    """Newton–Schulz on one 2-D matrix, stored in ``x.dtype`` between operations.

    Each matmul-and-add is computed in at least float32 and rounded once to ``x.dtype``
    (as torch's bfloat16 ``addmm`` and a GPU's bfloat16 matmul accumulate in float32);
    the first norm is computed in ``norm_dtype`` (default: ``x.dtype``).
    """
    dt = x.dtype
    acc = compute_dtype(x)
    up = lambda y: y.astype(acc)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    if preconditioning in ("frobenius", "spectral"):
        xn = x if norm_dtype is None else x.astype(norm_dtype)
        norm = jnp.linalg.norm(
            xn.astype(compute_dtype(xn)), ord="fro" if preconditioning == "frobenius" else 2
        ).astype(xn.dtype)
        e = jnp.asarray(eps, norm.dtype)
        denom = norm + e if eps_mode == "add" else jnp.maximum(norm, e)
        x = (up(x) / denom.astype(acc)).astype(dt)
    eps_acc = jnp.asarray(eps, acc)
    for i, (a, b, c) in enumerate(coeffs):
        gram = (up(x) @ up(x).T.conj()).astype(dt)
        if i == 0 and preconditioning == "aol":
            s = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.abs(up(gram)), axis=-1), eps_acc))[:, None]
            x, gram = (up(x) * s).astype(dt), (up(gram) * s * s.T).astype(dt)
        elif i == 0 and preconditioning == "schatten":
            s = jax.lax.rsqrt(jnp.maximum(jnp.linalg.norm(up(gram)), eps_acc))
            x, gram = (up(x) * s).astype(dt), (up(gram) * s**2).astype(dt)
        poly = (b * up(gram) + (c * up(gram)) @ up(gram)).astype(dt)
        x = (a * up(x) + up(poly) @ up(x)).astype(dt)
    return x.T if transposed else x


def orthogonalize(
    x: jax.Array,
    ns_coeffs: Any = "standard",
    ns_steps: int = 5,
    *,
    eps: float = 1e-8,
    eps_mode: str = "add",
    preconditioning: str = "frobenius",
    dimension_numbers: Any = None,
    ns_dtype: Any = None,
    norm_dtype: Any = None,
) -> jax.Array:
    """Approximately ``U V^T`` for ``x = U S V^T``, by ``ns_steps`` Newton–Schulz steps::

        X_0 = x / (||x||_F + eps)        (eps_mode="add": optax, Keras, Keller Jordan)
        X_0 = x / max(||x||_F, eps)      (eps_mode="max": torch.optim.Muon)
        X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,    A_k = X_k X_k^T

    on the wide orientation (``x`` transposed when it has more rows than columns).
    The default quintic ``(3.4445, -4.7750, 2.0315)`` maximizes the slope at zero:
    its result has singular values in about [0.7, 1.2], not exactly 1.
    ``preconditioning`` (optax's): "frobenius" (above), "spectral" (divide by the
    largest singular value), "aol" or "schatten" (rescale inside the first step).
    ``ns_dtype`` is the dtype of the iteration (``jnp.bfloat16`` as torch.optim.Muon
    and Keller Jordan run it; default: the input's dtype, at least float32); the
    result has ``x``'s dtype. ``norm_dtype`` is the dtype of the first norm (default:
    ``ns_dtype``; Keras 3 computes it in float32 even for float64 input). Higher-rank
    ``x`` needs ``dimension_numbers``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> o = aj.orthogonalize(jnp.array([[3.0, 0.0], [0.0, 1.0]]), "cubic", 30)
    >>> [round(float(s), 4) for s in jnp.linalg.svd(o, compute_uv=False)]
    [1.0, 1.0]

    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024; Bernstein & Newhouse, "Old Optimizer, New Norm", 2024.
    """
    coeffs = resolve_ns_coeffs(ns_coeffs, ns_steps)
    v.check_eps("eps", eps)
    v.check_choice("eps_mode", eps_mode, EPS_MODES)
    v.check_choice("preconditioning", preconditioning, PRECONDITIONINGS)
    v.check_dtype("ns_dtype", ns_dtype)
    v.check_dtype("norm_dtype", norm_dtype)
    if dimension_numbers is None:
        if x.ndim != 2:
            raise ValueError(
                f"orthogonalize: a leaf of shape {x.shape} needs dimension_numbers "
                "(MuonDimensionNumbers); only rank-2 leaves default to (0, 1)."
            )
        dimension_numbers = MuonDimensionNumbers()
    batch, red, out = _axes(x, dimension_numbers)
    dt = jnp.dtype(ns_dtype) if ns_dtype is not None else compute_dtype(x)
    shape_of = lambda axes: tuple(x.shape[a] for a in axes)
    perm = batch + red + out
    y = x.astype(dt)
    ns = lambda m: _ns_matrix(m, coeffs, eps, eps_mode, preconditioning, norm_dtype)
    if perm == (0, 1):
        return ns(y).astype(x.dtype)
    flat = (math.prod(shape_of(batch)), math.prod(shape_of(red)), math.prod(shape_of(out)))
    y = jax.vmap(ns)(y.transpose(perm).reshape(flat))
    y = y.reshape(shape_of(batch) + shape_of(red) + shape_of(out))
    return y.transpose(np.argsort(perm)).astype(x.dtype)


def leaf_dimension_numbers(spec: Any, tree: Any, default: Any = None) -> list:
    """Per leaf of ``tree`` (``None`` and ``MaskedNode`` skipped): its dimension numbers or None.

    ``spec`` is ``None`` (``default`` for rank-2 leaves, ``None`` for others), one
    :class:`MuonDimensionNumbers` for every leaf, a tree of them (or of ``None``)
    shaped like ``tree`` or a prefix of it, or a function of ``tree`` returning one.
    """
    if callable(spec) and not is_dimension_numbers(spec):
        spec = spec(tree)
    leaves = jax.tree.leaves(tree)
    if spec is None:
        default = default or MuonDimensionNumbers()
        return [default if getattr(x, "ndim", 0) == 2 else None for x in leaves]
    spec = jax.tree.map(lambda d: _NO_DIMS if d is None else d, spec,
                        is_leaf=lambda x: x is None or is_dimension_numbers(x))
    stop = lambda x: x is _NO_DIMS or is_dimension_numbers(x) or isinstance(x, MaskedNode)
    try:
        full = jax.tree.map(lambda d, sub: jax.tree.map(lambda _: d, sub), spec, tree, is_leaf=stop)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "weight dimension numbers must be a MuonDimensionNumbers, or a tree of them (None "
            f"for leaves left out) with the structure of the params or a prefix of it: {e}"
        ) from None
    dims = jax.tree.leaves(full, is_leaf=lambda x: x is _NO_DIMS or is_dimension_numbers(x))
    dims = [None if d is _NO_DIMS else d for d in dims]
    if len(dims) != len(leaves):
        raise ValueError(
            f"weight dimension numbers give {len(dims)} entries for {len(leaves)} leaves."
        )
    return dims


class _NoDims:
    """Marks "no dimension numbers" while broadcasting (``None`` is an empty subtree)."""


_NO_DIMS = _NoDims()


def _masked_as_leaves(tree: Any) -> Any:
    return jax.tree.map(lambda x: 0 if isinstance(x, MaskedNode) else x, tree,
                        is_leaf=lambda x: isinstance(x, MaskedNode))


# --------------------------------------------------------------------------- Muon's momentum


class ScaleByMuonState(NamedTuple):
    """State of :func:`scale_by_muon`: step count, momentum used last, and the momentum."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any


def _lerp(start, end, weight):
    """torch.lerp's arithmetic: ``start + w (end - start)`` for w < 0.5, else from ``end``."""
    return jnp.where(
        weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight)
    )


def scale_by_muon(
    ns_coeffs: Any = "standard",
    ns_steps: int = 5,
    beta: ScalarOrSchedule = 0.95,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: Any = None,
    momentum_form: str = "debiased",
    eps_mode: str = "add",
    ns_dtype: Any = None,
    norm_dtype: Any = None,
) -> GradientTransformation:
    """Muon's direction: momentum, then Newton–Schulz orthogonalization (:func:`orthogonalize`).

    With ``t`` the 1-based step and ``m`` the momentum, per ``momentum_form``::

        "debiased" (optax):  m_t = b m_{t-1} + (1 - b) g_t
                             M = b m_t / (1 - b^(t+1)) + (1 - b) g_t / (1 - b^t)   (nesterov)
                             M = m_t / (1 - b^t)                                   (else)
        "ema" (torch):       m_t = b m_{t-1} + (1 - b) g_t,  M = (1 - b) g_t + b m_t | m_t
        "sum" (Keras):       m_t = b m_{t-1} + g_t,          M = g_t + b m_t | m_t
        u_t = NS(M)          (adaptive=True: u_t = <M, NS(M)> NS(M), optax's dual-norm scale)

    Every leaf must be a matrix under ``weight_dimension_numbers`` (see
    :func:`leaf_dimension_numbers`; rank-2 leaves by default): route other leaves
    elsewhere with :func:`accel_jax.partition`, as :func:`accel_jax.muon` does.
    ``beta`` may be a schedule (kept in state as ``"beta"``).
    """
    coeffs = resolve_ns_coeffs(ns_coeffs, ns_steps)
    v.check_decay("beta", beta)
    v.check_eps("eps", eps)
    v.check_dtype("mu_dtype", mu_dtype)
    v.check_dtype("ns_dtype", ns_dtype)
    v.check_dtype("norm_dtype", norm_dtype)
    v.check_choice("preconditioning", preconditioning, PRECONDITIONINGS)
    v.check_choice("momentum_form", momentum_form, MOMENTUM_FORMS)
    v.check_choice("eps_mode", eps_mode, EPS_MODES)
    v.check_flags(nesterov=nesterov, adaptive=adaptive)
    specs = {"beta": beta}

    init_fn = init_state(ScaleByMuonState, specs, mu_dtype)

    def update_fn(updates, state, params=None):
        del params
        # MaskedNodes (leaves routed elsewhere) count as leaves, so a mismatch names its path
        check_structure(_masked_as_leaves(updates), _masked_as_leaves(state.mu),
                        "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        b = hp["beta"]
        count = increment(state.count)
        bc, bc_next = bias_correction(b, count), bias_correction(b, increment(count))

        def momentum(g, m):
            dt = compute_dtype(g, m)
            g, m, bt = g.astype(dt), m.astype(dt), b.astype(dt)
            if momentum_form == "debiased":
                m = bt * m + (1 - bt) * g
                if nesterov:
                    out = bt * (m / bc_next.astype(dt)) + (1 - bt) * (g / bc.astype(dt))
                else:
                    out = m / bc.astype(dt)
            elif momentum_form == "ema":
                m = _lerp(m, g, 1 - bt)
                out = _lerp(g, m, bt) if nesterov else m
            else:
                m = m + (g + m * (bt - 1))
                out = g + bt * m if nesterov else m
            return out, m

        leaves, treedef = jax.tree.flatten(updates)
        dims = leaf_dimension_numbers(weight_dimension_numbers, updates)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
            updates)[0]]
        outs, mus = [], []
        for path, g, m, d in zip(paths, leaves, treedef.flatten_up_to(state.mu), dims,
                                 strict=True):
            if not jnp.issubdtype(getattr(g, "dtype", jnp.int32), jnp.inexact):
                outs.append(g)
                mus.append(m)
                continue
            if d is None:
                raise ValueError(
                    f"scale_by_muon: the leaf at {path} of shape {g.shape} is not a matrix; give "
                    "it weight dimension numbers or route it to another optimizer (aj.muon "
                    "routes it to AdamW)."
                )
            direction, new_m = momentum(g, m)
            o = orthogonalize(
                direction, coeffs, ns_steps, eps=eps, eps_mode=eps_mode,
                preconditioning=preconditioning, dimension_numbers=d, ns_dtype=ns_dtype,
                norm_dtype=norm_dtype,
            )
            if adaptive:
                o = jnp.sum(jnp.conj(direction) * o).astype(o.dtype) * o
            outs.append(o.astype(g.dtype))
            mus.append(new_m.astype(m.dtype))
        return (
            jax.tree.unflatten(treedef, outs),
            ScaleByMuonState(count, hp, jax.tree.unflatten(treedef, mus)),
        )

    return needs_params_tree(
        GradientTransformation(init_fn, update_fn),
        "scale_by_muon: orthogonalizes each matrix leaf",
    )


__all__ = [
    "MuonDimensionNumbers",
    "NS_COEFFS_PRESETS",
    "ScaleByMuonState",
    "leaf_dimension_numbers",
    "orthogonalize",
    "scale_by_muon",
]
