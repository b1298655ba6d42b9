"""Shape scaling of matrix leaves (Muon's learning-rate adjustment by fan-in and fan-out).

Which axes form a leaf's matrix is given by the dimension numbers of
:mod:`accel_jax.transforms.orthogonal` (:class:`MuonDimensionNumbers`); leaves without
them (not matrices) are left as they are.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    compute_dtype,
    needs_params_tree,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_hyperparams
from accel_jax.transforms.orthogonal import fans, leaf_dimension_numbers

ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")


def shape_scale(x: jax.Array, dims: Any, adjust_lr_fn: str, rms: float) -> float:
    """The learning-rate factor of a matrix leaf (``fan_in, fan_out`` from ``dims``)::

        "original"         sqrt(max(1, fan_out / fan_in))   (Keller Jordan; optax; torch)
        "match_rms_adamw"  rms * sqrt(max(fan_in, fan_out))  (Liu et al. 2025; optax's
                                                             consistent_rms, Keras' rms_rate)
        "none"             1
    """
    fan_in, fan_out = fans(x, dims)
    if adjust_lr_fn == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if adjust_lr_fn == "match_rms_adamw":
        return rms * math.sqrt(max(fan_in, fan_out))
    return 1.0


class ScaleByShapeState(NamedTuple):
    """State of :func:`scale_by_shape` with a learning rate: count, rate and adjusted rates."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def scale_by_shape(
    weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    *,
    adjust_lr_fn: str | None = None,
    learning_rate: ScalarOrSchedule | None = None,
) -> GradientTransformation:
    """Scales each matrix leaf by its shape factor ``s`` (:func:`shape_scale`)::

        u <- s * u                (learning_rate=None; optax.contrib.scale_by_shape)
        u <- -eta_t * s * u       (learning_rate given)

    Leaves that are not matrices (no dimension numbers) get ``s = 1``.
    ``adjust_lr_fn`` None means "match_rms_adamw" with ``rms = consistent_rms`` when
    that is given, else "original" (optax's meaning of ``consistent_rms``). With a
    learning rate, the state keeps ``"learning_rate"`` and, per leaf, the rate actually
    used, ``eta_t * s``, as ``"adjusted_learning_rate<path>"`` (e.g.
    ``"adjusted_learning_rate['w0']"``), which :func:`accel_jax.get_hyperparams`
    reports (setting those has no effect: they are recomputed every step).
    """
    if consistent_rms is not None:
        v.check_number("consistent_rms", consistent_rms, lo=0.0)
    if adjust_lr_fn is None:
        adjust_lr_fn = "original" if consistent_rms is None else "match_rms_adamw"
    v.check_choice("adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
    rms = 0.2 if consistent_rms is None else float(consistent_rms)
    if learning_rate is not None:
        v.check_rate("learning_rate", learning_rate)
    specs = {"learning_rate": learning_rate}

    def scales(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        dims = leaf_dimension_numbers(weight_dimension_numbers, tree)
        return [
            (jax.tree_util.keystr(p), None if d is None else shape_scale(x, d, adjust_lr_fn, rms))
            for (p, x), d in zip(leaves, dims, strict=True)
        ]

    def adjusted(lr, tree):
        return {
            f"adjusted_learning_rate{path}": lr * s
            for path, s in scales(tree) if s is not None
        }

    def init_fn(params):
        if learning_rate is None:
            return optax.EmptyState()
        hp = init_hyperparams(**specs)
        return ScaleByShapeState(jnp.zeros([], jnp.int32), {**hp, **adjusted(hp["learning_rate"],
                                                                              params)})

    def update_fn(updates, state, params=None):
        del params
        factors = [s for _, s in scales(updates)]
        lr = None
        if learning_rate is not None:
            stored = {"learning_rate": state.hyperparams["learning_rate"]}
            lr = current_hyperparams(specs, stored, state.count)["learning_rate"]
        leaves, treedef = jax.tree.flatten(updates)
        out = []
        for g, s in zip(leaves, factors, strict=True):
            if not jnp.issubdtype(getattr(g, "dtype", jnp.int32), jnp.inexact):
                out.append(g)
                continue
            s = 1.0 if s is None else s  # not a matrix: no shape factor
            dt = compute_dtype(g)
            factor = jnp.asarray(s, float_dtype()) if lr is None else -lr * s
            out.append((g.astype(dt) * factor.astype(dt)).astype(g.dtype))
        updates = jax.tree.unflatten(treedef, out)
        if learning_rate is None:
            return updates, state
        hp = {"learning_rate": lr, **adjusted(lr, updates)}
        return updates, ScaleByShapeState(increment(state.count), hp)

    return needs_params_tree(
        GradientTransformation(init_fn, update_fn), "scale_by_shape: scales each leaf by its shape"
    )


__all__ = ["ScaleByShapeState", "scale_by_shape", "shape_scale"]
