"""Layer-wise trust ratios (LARS, LAMB): each leaf's update rescaled by ``||w|| / ||u||``.

A *layer* is one leaf of the params tree (a kernel, a bias); its trust ratio makes
the step's size proportional to the size of the weights it changes, so that one
global learning rate suits layers of very different scales. The norms are plain
reductions over the whole leaf: under ``jax.jit`` with sharded params XLA adds the
per-device partial sums, so the ratio is the one a single device computes. Inside
``shard_map`` / ``pmap`` with a leaf split across devices, pass ``axis_name`` so the
partial sums are added with ``lax.psum``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    check_structure,
    compute_dtype,
    leafwise,
    needs_params_tree,
    require_params,
)
from accel_jax.combine import masked
from accel_jax.hyperparams import current_hyperparams, increment, init_state
from accel_jax.transforms.clipping import _sum_of_squares


class ScaleByTrustRatioState(NamedTuple):
    """State of :func:`scale_by_trust_ratio`: step count and the trust coefficient used last."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def leaf_norm(x: jax.Array, axis_name: Any = None) -> jax.Array:
    """The L2 (Frobenius) norm of a whole leaf, at least float32 (``psum`` over ``axis_name``)."""
    total = _sum_of_squares(x)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    return jnp.sqrt(total)


def trust_ratio(
    w_norm: jax.Array, u_norm: jax.Array, min_norm: Any, trust_coefficient: Any, eps: Any
) -> jax.Array:
    """``c * max(||w||, m) / (max(||u||, m) + eps)``, and 1 where either clipped norm is 0."""
    dt = w_norm.dtype
    w_norm = jnp.maximum(w_norm, jnp.asarray(min_norm, dt))
    u_norm = jnp.maximum(u_norm, jnp.asarray(min_norm, dt))
    ratio = jnp.asarray(trust_coefficient, dt) * w_norm / (u_norm + jnp.asarray(eps, dt))
    return jnp.where((w_norm == 0) | (u_norm == 0), jnp.ones([], dt), ratio)


def _is_everything(mask: Any) -> bool:
    return mask is None or (isinstance(mask, bool) and mask)


def scale_by_trust_ratio(
    min_norm: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    *,
    mask: Any | Callable[[Any], Any] | None = None,
    axis_name: Any = None,
) -> GradientTransformation:
    """Scales each leaf's update by its trust ratio (LARS, LAMB)::

        r = trust_coefficient * max(||w||, min_norm) / (max(||u||, min_norm) + eps)
        u <- r * u                  (u unchanged where either clipped norm is 0)

    with ``||.||`` the L2 norm of the whole leaf (Frobenius for a matrix), computed
    in at least float32. A leaf that is all zeros (a fresh bias) or receives a zero
    update keeps ``u``: as in optax, the ratio is then 1, not ``trust_coefficient``.
    ``mask`` (a pytree of bools shaped like the params or a prefix of it, or a
    function of the params returning one; ``None`` or ``True``: every leaf) selects
    the leaves that are rescaled; exclude biases and normalization scales this way.
    ``axis_name``: see the module docstring. ``trust_coefficient`` is kept in state.
    Flat params (:func:`accel_jax.flatten_params`) hold every layer in one buffer,
    so the ratio would be the whole model's: give this transformation the tree.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale_by_trust_ratio()
    >>> params = {"w": jnp.array([3.0, 4.0])}           # ||w|| = 5
    >>> u, _ = tx.update({"w": jnp.array([0.0, 0.5])}, tx.init(params), params)
    >>> u["w"].tolist()                                  # rescaled to norm 5
    [0.0, 5.0]

    References: You, Gitman & Ginsburg, "Large Batch Training of Convolutional
    Networks" (LARS), 2017; You et al., "Large Batch Optimization for Deep Learning:
    Training BERT in 76 minutes" (LAMB), ICLR 2020.
    """
    v.check_number("min_norm", min_norm, lo=0.0)
    v.check_number("trust_coefficient", trust_coefficient, lo=0.0, lo_open=True)
    v.check_eps("eps", eps)
    specs = {"trust_coefficient": trust_coefficient}

    init_fn = init_state(ScaleByTrustRatioState, specs)

    def update_fn(updates, state, params=None):
        require_params(params, "scale_by_trust_ratio")
        check_structure(updates, params, "the params")
        hp = current_hyperparams(specs, state.hyperparams, state.count)

        def rescale(u, w):
            dt = compute_dtype(u, w)
            r = trust_ratio(
                leaf_norm(w.astype(dt), axis_name),
                leaf_norm(u.astype(dt), axis_name),
                min_norm,
                hp["trust_coefficient"].astype(dt),
                eps,
            )
            return (u.astype(dt) * r.astype(dt)).astype(u.dtype)

        updates = jax.tree.map(leafwise(rescale), updates, params)
        return updates, ScaleByTrustRatioState(increment(state.count), hp)

    tx = needs_params_tree(
        GradientTransformation(init_fn, update_fn),
        "scale_by_trust_ratio: one trust ratio ||w|| / ||u|| per leaf",
    )
    return tx if _is_everything(mask) else masked(tx, mask)
