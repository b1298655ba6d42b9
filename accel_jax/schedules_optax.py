"""optax-named schedules: piecewise (constant or interpolated) by boundaries and scales,
and warm-up followed by a constant, a cosine or an exponential decay.

Each takes optax's arguments with optax's meaning, built from :mod:`accel_jax.schedules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import Schedule
from accel_jax.hyperparams import float_dtype
from accel_jax.schedules import cosine_decay, exponential_decay, join_schedules, linear_schedule

#: optax's name for :func:`cosine_decay` (same arguments, same values).
cosine_decay_schedule = cosine_decay


def _sorted_scales(name: str, boundaries_and_scales: Mapping[int, float] | None):
    items = sorted((boundaries_and_scales or {}).items())
    for b, s in items:
        v.check_number(f"{name}: boundary", b, lo=0.0)
        v.check_number(f"{name}: the scale at boundary {b}", s, lo=0.0)
    return [b for b, _ in items], [s for _, s in items]


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    """``init_value`` multiplied by every scale whose boundary has been reached
    (``{100: 0.1, 200: 0.5}``: x0.1 from step 100, x0.05 from step 200).

    >>> import accel_jax as aj
    >>> [round(float(aj.piecewise_constant_schedule(1.0, {2: 0.1})(t)), 4) for t in (1, 2)]
    [1.0, 0.1]
    """
    boundaries, scales = _sorted_scales("piecewise_constant_schedule", boundaries_and_scales)
    values = [init_value * math.prod(scales[:i]) for i in range(len(scales) + 1)]

    def schedule(step):
        if not boundaries:
            return jnp.asarray(values[0], float_dtype())
        index = jnp.sum(jnp.asarray(step) >= jnp.asarray(boundaries, jnp.int32))
        return jnp.asarray(values, float_dtype())[index]

    return schedule


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    """Like :func:`piecewise_constant_schedule`, but moving from each value to the next
    between consecutive boundaries, linearly or along half a cosine (``interpolate_type``
    ``"linear"`` or ``"cosine"``), starting from step 0.

    >>> import accel_jax as aj
    >>> s = aj.piecewise_interpolate_schedule("linear", 1.0, {4: 0.5})
    >>> [float(s(t)) for t in (0, 2, 4, 9)]
    [1.0, 0.75, 0.5, 0.5]
    """
    v.check_choice("interpolate_type", interpolate_type, ("linear", "cosine"))
    boundaries, scales = _sorted_scales("piecewise_interpolate_schedule", boundaries_and_scales)
    bounds = [0, *boundaries]
    values = [init_value * math.prod(scales[:i]) for i in range(len(scales) + 1)]

    def schedule(step):
        t = jnp.asarray(step).astype(float_dtype())
        result = jnp.asarray(values[-1], float_dtype())
        for i in reversed(range(len(boundaries))):  # the interval [bounds[i], bounds[i+1])
            lo, hi = bounds[i], bounds[i + 1]
            frac = (t - lo) / max(hi - lo, 1)
            start, end = values[i], values[i + 1]
            if interpolate_type == "linear":
                value = start + (end - start) * frac
            else:
                value = end + (start - end) / 2 * (jnp.cos(jnp.pi * frac) + 1)
            result = jnp.where((lo <= t) & (t < hi), value, result)
        return result

    return schedule


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    >>> import accel_jax as aj
    >>> [float(aj.warmup_constant_schedule(0.0, 1.0, 2)(t)) for t in range(4)]
    [0.0, 0.5, 1.0, 1.0]
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then cosine decay to ``end_value`` at step
    ``decay_steps`` (counted from 0, warm-up included).

    >>> import accel_jax as aj
    >>> [round(float(aj.warmup_cosine_decay_schedule(0.0, 1.0, 1, 3)(t)), 3) for t in range(4)]
    [0.0, 1.0, 0.5, 0.0]
    """
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay(peak_value, decay_steps - warmup_steps, alpha, exponent),
        ],
        [warmup_steps],
    )


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Linear warm-up to ``peak_value``, then :func:`exponential_decay` from there
    (its step counted from the end of the warm-up).

    >>> import accel_jax as aj
    >>> s = aj.warmup_exponential_decay_schedule(0.0, 1.0, 2, 1, 0.5)
    >>> [float(s(t)) for t in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
                              staircase, end_value),
        ],
        [warmup_steps],
    )
