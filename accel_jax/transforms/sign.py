"""Sign-based scalings: Lion."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_structure,
    compute_dtype,
    leafwise,
    update_moment,
)
from accel_jax.hyperparams import current_hyperparams, increment, init_state


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`: step count, betas used last, and the momentum."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any


def scale_by_lion(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any = None,
    *,
    mode: str = "hard",
    smooth_beta: float = 1.0,
) -> GradientTransformation:
    """Lion's scaling (Chen et al., 2023): the sign of an interpolated momentum::

        u_t = sign(b1 * m_{t-1} + (1 - b1) * g_t)
        m_t = b2 * m_{t-1} + (1 - b2) * g_t

    Every coordinate moves by exactly the learning rate, so Lion's learning rate
    is typically 3-10x smaller than AdamW's (and its weight decay larger). One
    state tree (``mu``, dtype ``mu_dtype``). ``b1`` in [0, 1] (``b1 = 0``: sign
    of the gradient), ``b2`` in [0, 1). ``mode`` (optax's variants) replaces
    ``sign(x)``: ``"smooth"`` by ``tanh(smooth_beta * x)``, ``"refined"`` by ``x``
    where ``|x| < 1`` (the sign elsewhere); an unknown mode is refused here, where
    optax refuses it at the first update.

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
    NeurIPS 2023.
    """
    v.check_number("b1", b1, lo=0.0, hi=1.0, allow_schedule=True)
    v.check_decay("b2", b2)
    v.check_dtype("mu_dtype", mu_dtype)
    v.check_choice("mode", mode, ("hard", "smooth", "refined"))
    v.check_number("smooth_beta", smooth_beta)
    specs = {"b1": b1, "b2": b2}

    init_fn = init_state(ScaleByLionState, specs, mu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)

        def direction(g, m):
            dt = compute_dtype(g, m)
            b1_t = hp["b1"].astype(dt)
            x = (1 - b1_t) * g.astype(dt) + b1_t * m.astype(dt)
            if mode == "smooth":
                x = jnp.tanh(jnp.asarray(smooth_beta, dt) * x)
            elif mode == "refined":
                x = jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))
            else:
                x = jnp.sign(x)
            return x.astype(g.dtype)

        new_updates = jax.tree.map(leafwise(direction), updates, state.mu)
        mu = update_moment(updates, state.mu, hp["b2"], 1)
        return new_updates, ScaleByLionState(increment(state.count), hp, mu)

    return GradientTransformation(init_fn, update_fn)
