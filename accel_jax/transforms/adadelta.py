"""Adadelta: a step whose unit is that of the params, from two running averages of squares."""

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


class ScaleByAdadeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`: step count, ``rho`` used last, both averages."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    e_g: Any  # running average of squared gradients
    e_x: Any  # running average of squared steps


def scale_by_adadelta(
    rho: ScalarOrSchedule = 0.9,
    eps: float = 1e-6,
    *,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adadelta's scaling (Zeiler, 2012)::

        E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        u_t = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * u_t^2

    The same in optax, torch.optim and Keras (which differ in defaults only).
    ``nu_dtype`` sets the dtype of both averages; ``E[dx^2]`` is updated from the
    step in the computation dtype (at least float32), before it is cast to the
    update's dtype.

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701.
    """
    v.check_decay("rho", rho)
    v.check_eps("eps", eps)
    v.check_dtype("nu_dtype", nu_dtype)
    specs = {"rho": rho}

    init_fn = init_state(ScaleByAdadeltaState, specs, nu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.e_g, "the optimizer state (e_g)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        e_g = update_moment(updates, state.e_g, hp["rho"], 2)

        def step(g, sq_g, sq_x):
            dt = compute_dtype(g, sq_g, sq_x)
            e = jnp.asarray(eps, dt)
            return jnp.sqrt(sq_x.astype(dt) + e) / jnp.sqrt(sq_g.astype(dt) + e) * g.astype(dt)

        wide = jax.tree.map(leafwise(step), updates, e_g, state.e_x)
        e_x = update_moment(wide, state.e_x, hp["rho"], 2)
        updates = jax.tree.map(leafwise(lambda u, g: u.astype(g.dtype)), wide, updates)
        return updates, ScaleByAdadeltaState(increment(state.count), hp, e_g, e_x)

    return GradientTransformation(init_fn, update_fn)
