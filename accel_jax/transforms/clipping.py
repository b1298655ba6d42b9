"""Clipping: by value, by global norm, and adaptive (unit-wise) gradient clipping.

All three are stateless (state: ``EmptyState``) and go *first* in a chain, on the
raw gradients. The global norm is a plain reduction over every leaf, so under
``jax.jit`` with sharded params XLA inserts the cross-device sum and the result
is the one a single device computes. Inside ``shard_map`` / ``pmap`` with the
params split across devices, pass ``axis_name`` so the partial sums are added
with ``lax.psum``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    compute_dtype,
    is_trainable,
    leafwise,
    needs_params_tree,
    require_params,
    stateless,
)


def _sum_of_squares(x: jax.Array, axis: Any = None, keepdims: bool = False) -> jax.Array:
    """``sum(|x|^2)`` in at least float32 (real and imaginary parts for complex ``x``)."""
    x = x.astype(compute_dtype(x))
    sq = jnp.square(x.real) + jnp.square(x.imag) if jnp.iscomplexobj(x) else jnp.square(x)
    return jnp.sum(sq, axis=axis, keepdims=keepdims)


def global_norm(tree: Any, axis_name: Any = None) -> jax.Array:
    """The L2 norm of all inexact leaves of ``tree`` together::

        ||g|| = sqrt(sum over leaves, sum over elements |g_i|^2)

    computed in at least float32. ``axis_name`` (inside ``shard_map``/``pmap``
    when the leaves are split across devices) adds the per-device sums with
    ``lax.psum`` before the square root.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> float(aj.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}))
    5.0
    """
    leaves = [x for x in jax.tree.leaves(tree) if is_trainable(x)]
    total = jnp.zeros([], jnp.float32)
    for x in leaves:
        s = _sum_of_squares(x)
        total = total.astype(s.dtype) + s
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    return jnp.sqrt(total)


def unit_norms(x: jax.Array, axis: Any = None) -> jax.Array:
    """L2 norm of each *unit* of ``x``, broadcast back to ``x.shape`` (at least float32).

    A unit is the slice that the reduction ``axis`` sweeps: with ``axis=None``
    the axes follow the layer conventions of optax's ``unitwise_norm`` -- the
    whole array for scalars and vectors, axis 0 for ``(in, out)`` kernels and
    ``(in, heads, dim)`` attention kernels, axes ``(0, 1, 2)`` for ``HWIO``
    convolutions, ``(0, 1, 2, 3)`` for ``DHWIO``; so a unit is one output
    neuron's incoming weights.
    """
    if axis is None:
        if jnp.squeeze(x).ndim <= 1:
            axis = tuple(range(x.ndim))
        elif x.ndim in (2, 3):
            axis = 0
        elif x.ndim in (4, 5):
            axis = tuple(range(x.ndim - 1))
        else:
            raise ValueError(
                f"unit norms: no default reduction axes for a parameter of shape {x.shape}; "
                "pass axis= (or a mask that leaves this parameter out)."
            )
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(
            f"unit norms: axis {axis!r} is out of range for a parameter of shape {x.shape}; "
            "pass another axis (or a mask that leaves this parameter out)."
        )
    return jnp.broadcast_to(jnp.sqrt(_sum_of_squares(x, axis=axes, keepdims=True)), x.shape)


def _check_axis(axis: Any) -> None:
    if axis is None:
        return
    axes = (axis,) if isinstance(axis, int) else axis
    try:
        ok = all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"axis must be None, an int or a tuple of ints, got {axis!r}.")


def clip(max_delta: float) -> GradientTransformation:
    """Clips every update coordinate to ``[-max_delta, max_delta]``::

        u_i <- min(max(u_i, -max_delta), max_delta)

    (complex coordinates keep their phase: ``u_i <- u_i * min(1, max_delta / |u_i|)``).
    optax's ``clip``, Keras' ``clipvalue``, torch's ``clip_grad_value_``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.clip(1.0)
    >>> tx.update({"w": jnp.array([-3.0, 0.5, 2.0])}, tx.init(None))[0]["w"].tolist()
    [-1.0, 0.5, 1.0]
    """
    v.check_number("max_delta", max_delta, lo=0.0)

    def clip_leaf(g):
        if jnp.iscomplexobj(g):
            mag = jnp.abs(g)
            scale = jnp.where(mag > max_delta, max_delta / jnp.where(mag > 0, mag, 1), 1)
            dt = compute_dtype(g)
            return (g.astype(dt) * scale.astype(dt)).astype(g.dtype)
        bound = jnp.asarray(max_delta, g.dtype)
        return jnp.clip(g, -bound, bound)

    return stateless(lambda updates, params: jax.tree.map(leafwise(clip_leaf), updates))


def clip_by_global_norm(max_norm: float, *, axis_name: Any = None) -> GradientTransformation:
    """Rescales all updates together when their global norm exceeds ``max_norm``::

        ||g|| = sqrt(sum_i |g_i|^2)  over every coordinate of every leaf
        u <- u                          if ||g|| < max_norm
        u <- (u / ||g||) * max_norm     otherwise

    The direction is kept. optax's ``clip_by_global_norm`` (same operations, so
    the same numbers), Keras' ``global_clipnorm``, torch's ``clip_grad_norm_``
    (which divides by ``||g|| + 1e-6``). Correct with params sharded under
    ``jax.jit``; inside ``shard_map``/``pmap`` with split params give
    ``axis_name`` (see :func:`global_norm`).

    Reference: Pascanu, Mikolov & Bengio, ICML 2013.
    """
    v.check_number("max_norm", max_norm, lo=0.0, lo_open=True)

    def update_fn(updates, params):
        del params
        norm = global_norm(updates, axis_name)
        keep = norm < max_norm

        def rescale(g):
            clipped = (g / norm.astype(g.dtype)) * jnp.asarray(max_norm, g.dtype)
            return jnp.where(keep, g, clipped).astype(g.dtype)

        return jax.tree.map(leafwise(rescale), updates)

    return stateless(update_fn)


def adaptive_grad_clip(
    clipping: float, eps: float = 1e-3, *, axis: Any = None
) -> GradientTransformation:
    """Adaptive gradient clipping (AGC): unit-wise, relative to the parameter norm::

        max_i = clipping * max(||w_i||, eps)
        g_i <- g_i                              if ||g_i|| < max_i
        g_i <- g_i * max_i / max(||g_i||, 1e-6)  otherwise

    for every unit ``i`` (one output neuron's incoming weights; see
    :func:`unit_norms` for the default axes, or give ``axis``). ``eps`` keeps
    zero-initialised parameters (biases) trainable. Same numbers as optax's
    ``adaptive_grad_clip``. Needs the params.

    Reference: Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image
    Recognition Without Normalization", ICML 2021.
    """
    v.check_number("clipping", clipping, lo=0.0, lo_open=True)
    v.check_eps("eps", eps)
    _check_axis(axis)

    def update_fn(updates, params):
        require_params(params, "adaptive_grad_clip")

        def agc(g, w):
            g_norm = unit_norms(g, axis)
            limit = clipping * jnp.maximum(unit_norms(w, axis), eps).astype(g_norm.dtype)
            clipped = g * (limit / jnp.maximum(g_norm, 1e-6)).astype(g.dtype)
            return jnp.where(g_norm < limit, g, clipped).astype(g.dtype)

        return jax.tree.map(leafwise(agc), updates, params)

    return needs_params_tree(
        stateless(update_fn), "adaptive_grad_clip: clips each unit of a leaf by its own norm"
    )
