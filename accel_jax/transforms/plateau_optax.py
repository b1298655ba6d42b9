"""optax's ``reduce_on_plateau`` semantics (``reduce_on_plateau(rtol=..., atol=...)``).

:func:`accel_jax.reduce_on_plateau` runs this when given optax's arguments
(``rtol``/``atol``) or ``convention="optax"``; its default is torch's counting
(see ``transforms/plateau.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, compute_dtype, leafwise
from accel_jax.hyperparams import float_dtype, increment


class ReduceLROnPlateauState(NamedTuple):
    """optax's state layout (``scale, best_value, plateau_count, cooldown_count, count,
    avg_value``), plus ``hyperparams={"scale": ...}`` for :func:`accel_jax.get_hyperparams`.

    The scale the next update uses is ``hyperparams["scale"]`` (so
    ``set_hyperparams(state, scale=...)`` works); ``scale`` mirrors it.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array  # int32
    cooldown_count: jax.Array  # int32
    count: jax.Array  # int32: values in the current window
    avg_value: jax.Array  # mean of the values of the current window
    hyperparams: dict[str, jax.Array] | None = None  # None in a state built by hand


def _scale(state: ReduceLROnPlateauState) -> jax.Array:
    return state.scale if state.hyperparams is None else state.hyperparams["scale"]


def _float_dtypes(params: Any) -> list:
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(params)]
    return [x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)] or [float_dtype()]


def optax_reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
) -> GradientTransformationExtraArgs:
    """optax's plateau rule: the mean ``a`` of ``accumulation_size`` values improves
    when ``a < (1 - rtol) * best - atol``; after ``patience`` evaluations in a row
    without improvement the scale is multiplied by ``factor`` (not below
    ``min_scale``) and the next ``cooldown`` evaluations are not counted.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.reduce_on_plateau(0.5, patience=2, rtol=0.0)
    >>> state = tx.init(jnp.zeros(1))
    >>> for loss in [1.0, 1.0, 1.0]:
    ...     u, state = tx.update(jnp.ones(1), state, value=loss)
    >>> float(state.scale), u.tolist()
    (0.5, [0.5])

    Reference: optax.contrib.reduce_on_plateau.
    """
    v.check_number("factor", factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    v.check_number("patience", patience, lo=0.0, integer=True)
    v.check_number("rtol", rtol, lo=0.0, hi=1.0)
    v.check_number("atol", atol, lo=0.0)
    v.check_number("cooldown", cooldown, lo=0.0, integer=True)
    v.check_number("accumulation_size", accumulation_size, lo=1.0, integer=True)
    v.check_number("min_scale", min_scale, lo=0.0, hi=1.0)

    def init_fn(params):
        dtypes = _float_dtypes(params)
        low = min(dtypes, key=lambda d: jnp.dtype(d).itemsize)
        high = max(dtypes, key=lambda d: jnp.dtype(d).itemsize)
        # One new buffer per field: a donated step must never see one buffer twice.
        return ReduceLROnPlateauState(
            scale=jnp.ones([], low),
            best_value=jnp.full([], jnp.inf, high),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], high),
            hyperparams={"scale": jnp.ones([], low)},
        )

    def evaluate(state):
        best, avg = state.best_value, state.avg_value
        improved = avg < (1 - rtol) * best - atol
        plateau = jnp.where(improved, 0, increment(state.plateau_count))
        in_cooldown = state.cooldown_count > 0
        reduce = jnp.logical_and(~in_cooldown, plateau == patience)
        scale = _scale(state)
        scale = jnp.maximum(jnp.where(reduce, scale * factor, scale),
                            jnp.asarray(min_scale, scale.dtype)).astype(scale.dtype)
        return state._replace(
            best_value=jnp.where(improved, avg, best).astype(best.dtype),
            plateau_count=jnp.where(in_cooldown | reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(
                in_cooldown, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0)
            ).astype(jnp.int32),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], avg.dtype),
            hyperparams=(None if state.hyperparams is None
                         else {**state.hyperparams, "scale": scale}),
            scale=scale,
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau needs the monitored value: call "
                "tx.update(updates, state, params, value=loss)."
            )
        count = increment(state.count)
        avg_dt = state.avg_value.dtype
        avg = (state.count.astype(avg_dt) * state.avg_value + jnp.asarray(value).astype(avg_dt)
               ) / count.astype(avg_dt)
        state = state._replace(count=count, avg_value=avg)
        judged = evaluate(state)
        state = jax.tree.map(lambda a, b: jnp.where(count == accumulation_size, a, b),
                             judged, state)
        scale = _scale(state)
        if state.hyperparams is not None:
            state = state._replace(scale=jnp.array(scale, copy=True))

        def rescale(g):
            dt = compute_dtype(g)
            return (g.astype(dt) * scale.astype(dt)).astype(g.dtype)

        return jax.tree.map(leafwise(rescale), updates), state

    return GradientTransformationExtraArgs(init_fn, update_fn)
