"""Lookahead (Zhang et al., 2019) with the slow weights in the optimizer state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
    require_params,
)
from accel_jax.combine import _call_update
from accel_jax.hyperparams import increment


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: the fast optimizer's state, the step count since the
    last synchronisation, and the slow weights."""

    fast_state: Any
    steps_since_sync: jax.Array  # int32
    slow: Any


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformationExtraArgs:
    """Lookahead: ``fast_optimizer`` moves the params (the fast weights); every
    ``sync_period`` steps the slow weights move towards them and the params jump
    to the slow weights::

        phi <- phi + alpha * (theta - phi);   theta <- phi     (every k steps)

    with ``alpha = slow_step_size``, ``k = sync_period``. A drop-in wrapper: the
    params are the plain params and the slow weights ``phi`` live in the state
    (optax's ``lookahead`` instead takes ``LookaheadParams(fast, slow)`` as
    params); the numbers are optax's. ``reset_state`` re-initialises the fast
    optimizer's state at each synchronisation. ``update`` needs the params.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.lookahead(aj.sgd(1.0), sync_period=2, slow_step_size=0.5)
    >>> p = jnp.zeros(1)
    >>> s = tx.init(p)
    >>> for _ in range(2):
    ...     u, s = tx.update(jnp.ones(1), s, p)
    ...     p = aj.apply_updates(p, u)
    >>> p.tolist(), s.slow.tolist()  # fast went to -2, slow half-way: -1
    ([-1.0], [-1.0])

    Reference: Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward,
    1 step back", NeurIPS 2019.
    """
    v.check_transformation("fast_optimizer", fast_optimizer)
    v.check_flags(reset_state=reset_state)
    v.check_number("sync_period", sync_period, lo=1.0, integer=True)
    v.check_number("slow_step_size", slow_step_size, lo=0.0, hi=1.0)

    def init_fn(params):
        slow = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return LookaheadState(fast_optimizer.init(params), jnp.zeros([], jnp.int32), slow)

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, "lookahead")
        fast_updates, fast_state = _call_update(
            fast_optimizer, updates, state.fast_state, params, extra_args
        )
        sync = state.steps_since_sync == sync_period - 1
        # diff = (fast params after this step) - slow
        diff = jax.tree.map(lambda p, u, s: p + u - s, params, fast_updates, state.slow)
        slow = jax.tree.map(
            lambda s, d: jnp.where(sync, s + slow_step_size * d, s).astype(s.dtype),
            state.slow, diff,
        )
        out = jax.tree.map(
            lambda u, d: jnp.where(sync, u - (1 - slow_step_size) * d, u).astype(u.dtype),
            fast_updates, diff,
        )
        if reset_state:
            fresh = fast_optimizer.init(params)
            fast_state = jax.tree.map(lambda c, i: jnp.where(sync, i, c), fast_state, fresh)
        steps = increment(state.steps_since_sync) % sync_period
        return out, LookaheadState(fast_state, steps, slow)

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), fast_optimizer)
