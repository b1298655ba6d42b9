"""Gradient-spike guard: skip a step whose gradient norm is far above its running statistics.

In the spirit of levanter's skip-step and axlearn's ``skip_and_clip_by_global_norm``:
a loss spike usually shows first as a gradient norm many standard deviations
above its recent values; taking that step can throw training off for thousands
of steps, skipping it costs one batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
)
from accel_jax.hyperparams import increment
from accel_jax.transforms.clipping import global_norm
from accel_jax.transforms.guards import run_inner_if


class SkipGradientSpikesState(NamedTuple):
    """State of :func:`skip_gradient_spikes`."""

    count: jax.Array  # int32: steps taken (not skipped)
    mean: jax.Array  # float32: running mean of the gradient norm over taken steps
    var: jax.Array  # float32: running variance of the gradient norm
    last_norm: jax.Array  # float32: the norm of the last step's gradient
    num_skipped: jax.Array  # int32: steps skipped so far
    inner_state: Any


def skip_gradient_spikes(
    inner: GradientTransformation,
    num_stds: float = 6.0,
    decay: float = 0.99,
    warmup_steps: int = 100,
    axis_name: Any = None,
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` except on steps whose gradient norm is a spike; those return zero
    updates and keep ``inner``'s state (as if the batch was never seen).

    With ``n`` steps taken so far and running mean ``mu`` and variance ``s2`` of the
    global gradient norm ``||g||`` over them, a step is skipped when ``n >=
    warmup_steps`` and ``||g|| > mu + num_stds * sqrt(s2)``, or when ``||g||`` is
    not finite. A taken step updates the statistics with weight ``d = min(decay,
    n / (n + 1))`` (an exact average for the first steps, then an exponential
    one)::

        mu <- d * mu + (1 - d) * ||g||,   s2 <- d * (s2 + (1 - d) * (||g|| - mu_old)^2)

    ``axis_name`` makes the norm global across devices inside ``shard_map``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.skip_gradient_spikes(aj.sgd(1.0), num_stds=3.0, warmup_steps=3)
    >>> s = tx.init(jnp.zeros(2))
    >>> for g in [1.0, 1.1, 0.9, 1.0, 50.0]:
    ...     u, s = tx.update(jnp.full(2, g), s)
    >>> u.tolist(), int(s.num_skipped)
    ([-0.0, -0.0], 1)
    """
    v.check_transformation("inner", inner)
    v.check_number("num_stds", num_stds, lo=0.0, lo_open=True)
    v.check_number("decay", decay, lo=0.0, hi=1.0, hi_open=True)
    v.check_number("warmup_steps", warmup_steps, lo=0.0, integer=True)

    def init_fn(params):
        f32 = jnp.float32
        return SkipGradientSpikesState(
            count=jnp.zeros([], jnp.int32),
            mean=jnp.zeros([], f32),
            var=jnp.zeros([], f32),
            last_norm=jnp.zeros([], f32),
            num_skipped=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        norm = global_norm(updates, axis_name).astype(jnp.float32)
        limit = state.mean + num_stds * jnp.sqrt(state.var)
        spike = ~jnp.isfinite(norm) | ((state.count >= warmup_steps) & (norm > limit))
        new_updates, inner_state = run_inner_if(
            ~spike, inner, updates, state.inner_state, params, extra_args
        )
        n = state.count.astype(jnp.float32)
        d = jnp.minimum(jnp.float32(decay), n / (n + 1))
        delta = norm - state.mean
        mean = state.mean + (1 - d) * delta
        var = d * (state.var + (1 - d) * delta**2)
        keep = lambda new, old: jnp.where(spike, old, new)  # noqa: E731
        return new_updates, SkipGradientSpikesState(
            count=keep(increment(state.count), state.count),
            mean=keep(mean, state.mean),
            var=keep(var, state.var),
            last_norm=norm,
            num_skipped=jnp.where(spike, increment(state.num_skipped), state.num_skipped),
            inner_state=inner_state,
        )

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), inner)
