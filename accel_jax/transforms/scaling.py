"""Scaling: by a constant, by the learning rate or a schedule; gradient centralization."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    compute_dtype,
    leafwise,
    needs_params_tree,
    stateless,
)
from accel_jax.hyperparams import current_hyperparams, increment, init_state


def scale(step_size: float | None = None, *, factor: float | None = None) -> GradientTransformation:
    """Multiplies every update by a constant: ``u <- step_size * u`` (state: ``EmptyState``).

    ``step_size`` is optax's name; ``factor`` is accepted as an alias.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale(-2.0)
    >>> tx.update({"w": jnp.ones(2)}, tx.init(None))[0]["w"].tolist()
    [-2.0, -2.0]
    """
    if (step_size is None) == (factor is None):
        raise TypeError("scale() takes one of step_size (optax's name) or factor.")
    name, factor = ("step_size", step_size) if factor is None else ("factor", factor)
    v.check_number(name, factor)

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
    v.check_flags(flip_sign=flip_sign)
    v.check_rate("learning_rate", learning_rate)
    specs = {"learning_rate": learning_rate}

    init_fn = init_state(ScaleByLearningRateState, specs)

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


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the step count."""

    count: jax.Array  # int32


def scale_by_schedule(step_size_fn: Any) -> GradientTransformation:
    """Multiplies the updates by ``step_size_fn(count)`` (count = 0, 1, ...; optax's form).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.scale_by_schedule(lambda t: 0.5 ** t)
    >>> s = tx.init(jnp.zeros(1))
    >>> u0, s = tx.update(jnp.ones(1), s)
    >>> u1, s = tx.update(jnp.ones(1), s)
    >>> u0.tolist(), u1.tolist()
    ([1.0], [0.5])
    """
    if not callable(step_size_fn):
        raise ValueError(f"step_size_fn must be a schedule (step -> value), got {step_size_fn!r}.")

    def init_fn(params):
        del params
        return ScaleByScheduleState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        step_size = step_size_fn(state.count)

        def rescale(g):
            dt = compute_dtype(g)
            return (g.astype(dt) * jnp.asarray(step_size).astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(rescale), updates)
        return updates, ScaleByScheduleState(increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def centralize() -> GradientTransformation:
    """Gradient centralization: subtracts from every leaf with ``ndim > 1`` its mean over all
    axes but the first (1-d leaves pass unchanged)::

        u <- u - mean(u, axis=(1, ..., ndim - 1))

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.centralize()
    >>> tx.update(jnp.array([[1.0, 3.0]]), tx.init(None))[0].tolist()
    [[-1.0, 1.0]]

    Reference: Yong et al., "Gradient Centralization", ECCV 2020.
    """

    def center(g):
        if g.ndim <= 1:
            return g
        dt = compute_dtype(g)
        x = g.astype(dt)
        return (x - x.mean(axis=tuple(range(1, g.ndim)), keepdims=True)).astype(g.dtype)

    tx = stateless(lambda updates, params: jax.tree.map(leafwise(center), updates))
    return needs_params_tree(tx, "centralize: a mean per row of each leaf")
