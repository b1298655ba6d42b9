"""Adafactor's building blocks: the factored second moment and the per-block scalings.

:func:`scale_by_factored_rms` keeps, for a matrix ``G`` (n x m), only the moving
averages of its row means and column means of ``G^2`` (n + m numbers instead of
n * m) and estimates the second moment as their outer product over their mean
(rank 1, Shazeer & Stern 2018, section 3). Vectors, scalars and (by choice)
matrices with a small dimension keep a full second moment.

A *block* below is one leaf of the params tree (a kernel, a bias). The block
reductions (rms of the update, rms of the params) run over the whole leaf: under
``jax.jit`` with sharded params XLA adds the partial sums across devices, so the
result is the one a single device computes. Flat params
(:func:`accel_jax.flatten_params`) hold every block in one 1-D buffer, so neither
the factoring nor the block scalings can see the layers: give these the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    as_array_leaf,
    check_structure,
    compute_dtype,
    is_trainable,
    leafwise,
    needs_params_tree,
    require_params,
    stateless,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_hyperparams
from accel_jax.transforms.clipping import _sum_of_squares


def block_rms(x: jax.Array) -> jax.Array:
    """``sqrt(mean(|x|^2))`` over the whole leaf, in at least float32."""
    return jnp.sqrt(_sum_of_squares(x) / max(x.size, 1))


def factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int, last_two: bool
) -> tuple[int, int] | None:
    """``(d1, d0)``: the axes whose means are kept (``v_col`` drops ``d1``, ``v_row`` drops
    ``d0``), or ``None`` for a full second moment.

    ``last_two=False`` (optax): the two largest axes, if the smaller is at least
    ``min_dim_size_to_factor``. ``last_two=True`` (torch.optim, Keras): the last two
    axes of any array with two or more axes, under the same size rule.
    """
    if not factored or len(shape) < 2:
        return None
    if last_two:
        d1, d0 = len(shape) - 2, len(shape) - 1
    else:
        order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
        d1, d0 = order[-2], order[-1]
    if min(shape[d1], shape[d0]) < min_dim_size_to_factor:
        return None
    return d1, d0


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms`.

    Per leaf: ``v_row`` and ``v_col`` (the factored moment; shape ``(1,)`` for an
    unfactored leaf) and ``v`` (the full moment; shape ``(1,)`` for a factored leaf).
    """

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    v_row: Any
    v_col: Any
    v: Any


def decay_rate_pow(step: jax.Array, exponent: jax.Array) -> jax.Array:
    """Adafactor's second-moment decay ``1 - t^(-exponent)`` at step ``t = step + 1``."""
    t = (step + 1).astype(float_dtype())
    return 1 - t ** (-exponent.astype(float_dtype()))


def decay_rate_pow_float32(step: jax.Array, exponent: jax.Array) -> jax.Array:
    """:func:`decay_rate_pow` computed in float32 whatever the default dtype (as optax does)."""
    t = (step + 1).astype(jnp.float32)
    return (1 - t ** (-exponent.astype(jnp.float32))).astype(float_dtype())


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float | None = 1e-30,
    decay_rate_fn: Callable[[jax.Array, jax.Array], jax.Array] = decay_rate_pow,
    *,
    factor_last_two_dims: bool = False,
    eps_in_moment: bool = True,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Divides by a (factored) estimate of the root mean square gradient (Adafactor)::

        rho_t = decay_rate_fn(t - 1 - step_offset, decay_rate)  (1 - t^-0.8 by default)
        G2 = g^2 + eps                    (eps_in_moment=True: optax, Keras; else g^2)
        matrix:  R_t = rho_t R + (1 - rho_t) mean_cols(G2)    (one value per row)
                 C_t = rho_t C + (1 - rho_t) mean_rows(G2)    (one value per column)
                 V_t = R_t C_t^T / mean(R_t)
        other:   V_t = rho_t V + (1 - rho_t) G2
        u_t = g / sqrt(V_t)

    ``eps_in_moment=False`` is torch.optim's placement: ``V_t = R_t C_t^T /
    max(mean(R_t), eps)`` and ``u_t = g / sqrt(max(V_t, eps^2))``, with ``eps=None``
    meaning the machine epsilon of the leaf's dtype. Which leaves are factored and
    over which axes: :func:`factored_dims` (``factored=False``: none). The step
    ``t - 1 - step_offset`` is clamped at 0. ``decay_rate`` is kept in state;
    ``nu_dtype`` sets the dtype of the moments.

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost", ICML 2018.
    """
    v.check_flags(
        factored=factored, factor_last_two_dims=factor_last_two_dims, eps_in_moment=eps_in_moment
    )
    v.check_number("decay_rate", decay_rate, lo=0.0, allow_schedule=True)
    v.check_number("step_offset", step_offset, lo=0, integer=True)
    v.check_number("min_dim_size_to_factor", min_dim_size_to_factor, lo=0, integer=True)
    if epsilon is not None or eps_in_moment:
        v.check_eps("epsilon", epsilon)
    v.check_dtype("nu_dtype", nu_dtype)
    specs = {"decay_rate": decay_rate}

    def dims(x):
        return factored_dims(x.shape, factored, min_dim_size_to_factor, factor_last_two_dims)

    def shapes(x):
        """The shapes of ``(v_row, v_col, v)`` for a leaf shaped like ``x``."""
        d = dims(x)
        if d is None:
            return ((1,), (1,), tuple(x.shape))
        d1, d0 = d
        row = tuple(n for i, n in enumerate(x.shape) if i != d0)
        col = tuple(n for i, n in enumerate(x.shape) if i != d1)
        return (row, col, (1,))

    def moments(p):
        p = as_array_leaf(p)
        if not is_trainable(p):
            return (p, p, p)
        dt = nu_dtype if nu_dtype is not None else p.dtype
        return tuple(jnp.zeros(shape, dt) for shape in shapes(p))

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        parts = [moments(p) for p in leaves]
        return FactoredState(
            jnp.zeros([], jnp.int32),
            init_hyperparams(**specs),
            *(jax.tree.unflatten(treedef, [m[i] for m in parts]) for i in range(3)),
        )

    def update_fn(updates, state, params=None):
        del params
        if jax.tree.structure(updates) != jax.tree.structure(state.v):
            check_structure(updates, state.v, "the optimizer state (v)")
        paths = jax.tree_util.tree_flatten_with_path(updates)[0]
        for (path, g), *kept in zip(paths, *(jax.tree.leaves(t) for t in state[2:]), strict=True):
            g = as_array_leaf(g)
            if is_trainable(g) and shapes(g) != tuple(tuple(x.shape) for x in kept):
                raise ValueError(
                    f"updates do not match the optimizer state: at path "
                    f"{jax.tree_util.keystr(path)} the update has shape {tuple(g.shape)}, which "
                    "is not the shape of the params the state was initialised with."
                )
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        step = jnp.maximum(state.count - jnp.asarray(step_offset, jnp.int32), 0)
        rho = decay_rate_fn(step, hp["decay_rate"])

        def leaf(g, row, col, full):
            dt = compute_dtype(g, row, col, full)
            eps = jnp.asarray(jnp.finfo(g.dtype).eps if epsilon is None else epsilon, dt)
            r = rho.astype(dt)
            g = g.astype(dt)
            g2 = jnp.abs(g) ** 2 if jnp.iscomplexobj(g) else g * g
            g2 = (g2 + eps).real if eps_in_moment else g2.real
            d = dims(g)
            if d is None:
                full = r * full.astype(dt) + (1 - r) * g2
                var = full if eps_in_moment else jnp.maximum(full, eps * eps)
                return g * jax.lax.rsqrt(var).astype(dt), row, col, full
            d1, d0 = d
            row = r * row.astype(dt) + (1 - r) * jnp.mean(g2, axis=d0)
            col = r * col.astype(dt) + (1 - r) * jnp.mean(g2, axis=d1)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_mean = jnp.mean(row, axis=reduced_d1, keepdims=True)
            if not eps_in_moment:
                row_mean = jnp.maximum(row_mean, eps)
            row_var = jnp.expand_dims(row / row_mean, d0)
            col_var = jnp.expand_dims(col, d1)
            if eps_in_moment:
                u = g * jax.lax.rsqrt(row_var) * jax.lax.rsqrt(col_var)
            else:
                u = g * jax.lax.rsqrt(jnp.maximum(row_var * col_var, eps * eps))
            return u, row, col, full

        def per_leaf(g, row, col, full):
            if not is_trainable(g):
                return (g, row, col, full)
            u, new_row, new_col, new_full = leaf(g, row, col, full)
            return (
                u.astype(g.dtype),
                new_row.astype(row.dtype),
                new_col.astype(col.dtype),
                new_full.astype(full.dtype),
            )

        leaves, treedef = jax.tree.flatten(updates)
        leaves = [as_array_leaf(g) for g in leaves]
        states = [treedef.flatten_up_to(t) for t in (state.v_row, state.v_col, state.v)]
        out = [per_leaf(g, *s) for g, *s in zip(leaves, *states, strict=True)]
        new = [jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(4)]
        return new[0], FactoredState(increment(state.count), hp, new[1], new[2], new[3])

    tx = GradientTransformation(init_fn, update_fn)
    if not factored:
        return tx
    return needs_params_tree(tx, "scale_by_factored_rms: factors each matrix leaf's moment")


def clip_by_block_rms(threshold: float) -> GradientTransformation:
    """Clips each leaf's update to a root mean square of at most ``threshold``::

        u <- u / max(1, rms(u) / threshold)

    Adafactor's update clipping (Shazeer & Stern 2018, section 6; ``d`` there).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.clip_by_block_rms(1.0)
    >>> u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(None))      # rms 3.54
    >>> [round(float(x), 4) for x in u["w"]]
    [0.8485, 1.1314]
    """
    v.check_number("threshold", threshold, lo=0.0, lo_open=True)

    def clip(u):
        dt = compute_dtype(u)
        denom = jnp.maximum(jnp.ones([], dt), block_rms(u).astype(dt) / jnp.asarray(threshold, dt))
        return (u.astype(dt) / denom.astype(dt)).astype(u.dtype)

    tx = stateless(lambda updates, params: jax.tree.map(leafwise(clip), updates))
    return needs_params_tree(tx, "clip_by_block_rms: clips each leaf by its own RMS")


def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Scales each leaf's update by the root mean square of its params::

        u <- max(rms(w), min_scale) * u

    Adafactor's relative step size (Shazeer & Stern 2018, section 8; ``eps_2``
    there, 1e-3 in optax, torch.optim and Keras).
    """
    v.check_eps("min_scale", min_scale)

    def rescale(u, w):
        dt = compute_dtype(u, w)
        s = jnp.maximum(block_rms(w.astype(dt)).astype(dt), jnp.asarray(min_scale, dt))
        return (u.astype(dt) * s).astype(u.dtype)

    def update_fn(updates, params):
        require_params(params, "scale_by_param_block_rms")
        check_structure(updates, params, "the params")
        return jax.tree.map(leafwise(rescale), updates, params)

    return needs_params_tree(
        stateless(update_fn), "scale_by_param_block_rms: scales each leaf by its params' RMS"
    )


class ScaleByRelativeStepState(NamedTuple):
    """State of :func:`scale_by_relative_step`: step count and the step size used last."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def scale_by_relative_step(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Scales updates by Adafactor's decreasing step size::

        u <- rho_t * u,    rho_t = min(eta_t, 1 / sqrt(t))       (t = 1, 2, ...)

    (torch.optim's and Keras' Adafactor). ``state.hyperparams["learning_rate"]``
    holds ``rho_t``, the step size used; set there, a number is taken as the new
    ``eta`` (``min(rho, 1/sqrt(t))`` only decreases, so this is consistent).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale_by_relative_step(1.0)
    >>> state = tx.init(None)
    >>> for _ in range(4):
    ...     u, state = tx.update({"w": jnp.ones(1)}, state)
    >>> u["w"].tolist()                                  # 1 / sqrt(4)
    [0.5]
    """
    v.check_rate("learning_rate", learning_rate)
    specs = {"learning_rate": learning_rate}

    def init_fn(params):
        del params
        hp = init_hyperparams(**specs)
        return ScaleByRelativeStepState(
            jnp.zeros([], jnp.int32), {"learning_rate": jnp.minimum(hp["learning_rate"], 1.0)}
        )

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        t = increment(state.count).astype(float_dtype())
        rho = jnp.minimum(hp["learning_rate"], 1 / jnp.sqrt(t))

        def rescale(g):
            dt = compute_dtype(g)
            return (g.astype(dt) * rho.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(rescale), updates)
        return updates, ScaleByRelativeStepState(increment(state.count), {"learning_rate": rho})

    return GradientTransformation(init_fn, update_fn)
