"""Scaling by a constant and by the learning rate (a number or a schedule)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    compute_dtype,
    leafwise,
    stateless,
)
from accel_jax.hyperparams import current_hyperparams, increment, init_hyperparams


def scale(factor: float) -> GradientTransformation:
    """Multiplies every update by a constant: ``u <- factor * u`` (state: ``EmptyState``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale(-2.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init(None))[0]["w"].tolist()
    [-2.0, -2.0]
    """
    v.check_number("factor", factor)

    def rescale(g):
        return (g.astype(compute_dtype(g)) * factor).astype(g.dtype)

    return stateless(lambda updates, params: jax.tree.map(leafwise(rescale), updates))


class ScaleByLearningRateState(NamedTuple):
    """State of :func:`scale_by_learning_rate`: the step count and the rate used last."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Scales updates by the learning rate ``eta_t``: ``u <- -eta_t * u``.

    ``learning_rate`` is a number or a schedule ``step -> value`` evaluated at the
    transformation's step count ``t`` (0 at the first update). The rate used at
    the last step is kept in ``state.hyperparams["learning_rate"]`` (see
    :func:`accel_jax.get_hyperparams`). ``flip_sign=False`` scales by ``+eta_t``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale_by_learning_rate(0.5)
    >>> tx.update({"w": jnp.ones(2)}, tx.init(None))[0]["w"].tolist()
    [-0.5, -0.5]
    """
    v.check_rate("learning_rate", learning_rate)
    specs = {"learning_rate": learning_rate}

    def init_fn(params):
        del params
        return ScaleByLearningRateState(jnp.zeros([], jnp.int32), init_hyperparams(**specs))

    def update_fn(updates, state, params=None):
        del params
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        step = -hp["learning_rate"] if flip_sign else hp["learning_rate"]
        def rescale(g):
            dt = compute_dtype(g)
            return (g.astype(dt) * step.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(rescale), updates)
        return updates, ScaleByLearningRateState(increment(state.count), hp)

    return GradientTransformation(init_fn, update_fn)
