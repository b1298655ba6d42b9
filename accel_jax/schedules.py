"""Learning-rate (and momentum) schedules: pure functions ``step -> value``.

A schedule is a closure ``schedule(step) -> jax.Array``. It is jit-safe with a
traced integer step, works elementwise on an array of steps, and computes in the
default float dtype (float32, or float64 under ``jax_enable_x64``). Arguments are
validated when the schedule is built: a schedule's values are hyperparameter
values (learning rates, momenta, decays), so a negative or non-finite start, end
or peak value is refused (``cosine_decay(-0.01, ...)`` would be gradient ascent).

**Step convention.** ``step`` is the number of updates already applied: 0 at the
first update. This is ``optimizer.iterations`` in Keras and the value a torch
scheduler has set after ``k`` calls of ``scheduler.step()`` (one per optimizer
step). Every transformation that takes a learning rate (or a momentum / beta)
accepts a schedule and evaluates it at its own step count, and records the value
it used in its state (see :func:`accel_jax.get_hyperparams`).

``docs/scheduling.md`` maps every schedule to its Keras, torch.optim and optax
counterpart, with the off-by-one and end-of-schedule differences. The cyclic schedules
(warm restarts, one-cycle) are in :mod:`accel_jax.schedules_cyclic`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import Schedule
from accel_jax.hyperparams import float_dtype

ANNEAL_STRATEGIES = ("cos", "linear")


def _float(step) -> jax.Array:
    return jnp.asarray(step).astype(float_dtype())


def _anneal(start, end, frac, strategy: str = "linear") -> jax.Array:
    """From ``start`` (``frac = 0``) to ``end`` (``frac = 1``), linearly or along half a cosine.

    The one interpolation every schedule here uses (torch's ``_annealing_linear``
    and ``_annealing_cos``)::

        linear:  start + (end - start) * frac
        cos:     end + (start - end) * (1 + cos(pi * frac)) / 2
    """
    if strategy == "cos":
        return end + (start - end) * (1 + jnp.cos(math.pi * frac)) / 2
    return start + (end - start) * frac


def _fraction(step, steps, begin=0) -> jax.Array:
    """``clip((step - begin) / steps, 0, 1)``: the part of a transition completed."""
    # Python ints as floats: a step count may exceed int32 (decay_steps=10**10).
    steps, begin = (float(x) if isinstance(x, int) else x for x in (steps, begin))
    return jnp.clip((_float(step) - begin) / steps, 0.0, 1.0)


def _check_steps(name: str, value) -> None:
    """A positive whole number of steps (it may exceed int32: a schedule that never ends)."""
    v.check_number(name, value, lo=0.0, lo_open=True)
    if float(value) != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}.")


def _check_boundaries(boundaries: list) -> None:
    for i, b in enumerate(boundaries):
        v.check_number(f"boundaries[{i}]", b, lo=0.0, integer=True)
    if any(b1 >= b2 for b1, b2 in pairwise(boundaries)):
        raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}.")


def constant_schedule(value: float) -> Schedule:
    """``eta(t) = value``.

    >>> import accel_jax as aj
    >>> float(aj.constant_schedule(0.1)(1000))  # doctest: +ELLIPSIS
    0.10000000149...
    """
    v.check_number("value", value, lo=0.0)

    def schedule(step):
        return jnp.full(jnp.shape(step), value, float_dtype())

    return schedule


def power_decay(init_value: float, decay_steps: float, power: float = 1.0) -> Schedule:
    """Power scheduling: ``eta(t) = eta0 / (1 + t / s)**c``.

    ``init_value`` is ``eta0``, ``decay_steps`` is ``s`` and ``power`` is ``c``
    (typically 1). Keras' ``InverseTimeDecay(eta0, decay_steps, decay_rate)`` is
    ``power_decay(eta0, decay_steps / decay_rate, 1.0)``; torch Adagrad's
    ``lr_decay=d`` is ``power_decay(eta0, 1 / d)``.

    >>> import accel_jax as aj
    >>> round(float(aj.power_decay(0.1, 100)(100)), 6)
    0.05
    """
    v.check_number("init_value", init_value, lo=0.0)
    v.check_number("decay_steps", decay_steps, lo=0.0, lo_open=True)
    v.check_number("power", power, lo=0.0)

    def schedule(step):
        return init_value / (1 + _float(step) / decay_steps) ** power

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: float | None = None,
    decay_rate: float | None = None,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
    *,
    decay_steps: float | None = None,
) -> Schedule:
    """Exponential scheduling: ``eta(t) = eta0 * r**(t / s)`` (``staircase``: ``r**floor(t / s)``).

    ``init_value`` is ``eta0``, ``transition_steps`` is ``s`` (``decay_steps`` is
    accepted as an alias), ``decay_rate`` is ``r``: the rate is divided by ``1/r``
    every ``s`` steps (the seeds' ``0.1**(t/s)`` is ``r = 0.1``). optax's
    signature and meaning: the decay starts at ``transition_begin`` (``t`` above
    is ``step - transition_begin``, the value before is ``eta0``) and stops at
    ``end_value`` (a floor for ``r < 1``, a ceiling for ``r > 1``). Keras'
    ``ExponentialDecay`` with the same arguments; torch's ``ExponentialLR(gamma)``
    is ``exponential_decay(eta0, 1, gamma)``. Unlike optax, a non-positive
    ``transition_steps`` or a zero ``decay_rate`` is a ``ValueError`` (optax
    silently returns a constant schedule).

    >>> import accel_jax as aj
    >>> round(float(aj.exponential_decay(1.0, 10, 0.1)(20)), 6)
    0.01
    """
    if (transition_steps is None) == (decay_steps is None):
        raise TypeError("exponential_decay() takes one of transition_steps or decay_steps.")
    if decay_rate is None:
        raise TypeError("exponential_decay() needs decay_rate.")
    steps = transition_steps if decay_steps is None else decay_steps
    name = "transition_steps" if decay_steps is None else "decay_steps"
    v.check_number("init_value", init_value, lo=0.0)
    v.check_number(name, steps, lo=0.0, lo_open=True)
    v.check_number("decay_rate", decay_rate, lo=0.0, lo_open=True)
    v.check_number("transition_begin", transition_begin, lo=0.0, integer=True)
    if end_value is not None:
        v.check_number("end_value", end_value, lo=0.0)
    clip = jnp.maximum if decay_rate < 1.0 else jnp.minimum

    def schedule(step):
        t = _float(step) - transition_begin
        exponent = t / steps
        if staircase:
            exponent = jnp.floor(exponent)
        value = init_value * jnp.asarray(decay_rate, float_dtype()) ** exponent
        value = jnp.where(t <= 0, jnp.asarray(init_value, value.dtype), value)
        return value if end_value is None else clip(value, end_value)

    return schedule


def step_decay(init_value: float, step_size: int, factor: float = 0.1) -> Schedule:
    """Step decay: ``eta(t) = eta0 * factor**floor(t / step_size)``.

    Multiplies the rate by ``factor`` every ``step_size`` steps: torch's
    ``StepLR(step_size, gamma=factor)``. (The same as
    ``exponential_decay(eta0, step_size, factor, staircase=True)``.)

    >>> import accel_jax as aj
    >>> [round(float(aj.step_decay(1.0, 2, 0.5)(t)), 3) for t in range(5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    _check_steps("step_size", step_size)
    return exponential_decay(init_value, step_size, factor, staircase=True)


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """Piecewise constant scheduling, with absolute values per interval::

        eta(t) = values[0]   for t < boundaries[0]
                 values[i]   for boundaries[i-1] <= t < boundaries[i]
                 values[-1]  for t >= boundaries[-1]

    ``boundaries`` are increasing step counts; ``len(values) == len(boundaries) + 1``.
    The new value takes effect *at* the boundary step, as in torch's
    ``MultiStepLR(milestones, gamma)`` (values ``eta0 * gamma**i``) and optax.
    Keras' ``PiecewiseConstantDecay`` switches one step later (its intervals are
    ``(b[i-1], b[i]]``): pass ``[b + 1 for b in boundaries]`` to reproduce it.

    >>> import accel_jax as aj
    >>> s = aj.piecewise_constant([2, 4], [0.1, 0.01, 0.001])
    >>> [round(float(s(t)), 4) for t in range(6)]
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    """
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values must have one more element than boundaries, got {len(values)} values "
            f"for {len(boundaries)} boundaries."
        )
    _check_boundaries(boundaries)
    for i, x in enumerate(values):
        v.check_number(f"values[{i}]", x, lo=0.0)

    def schedule(step):
        index = jnp.searchsorted(jnp.asarray(boundaries, float_dtype()), _float(step), side="right")
        return jnp.asarray(values, float_dtype())[index]

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial decay from ``init_value`` to ``end_value``::

        f = clip((t - transition_begin) / transition_steps, 0, 1)
        eta(t) = end + (init - end) * (1 - f)**power

    Holds ``init_value`` before ``transition_begin`` and ``end_value`` after the
    transition. Keras' ``PolynomialDecay`` (``cycle=False``); torch's
    ``PolynomialLR(total_iters, power)`` is ``polynomial_schedule(eta0, 0.0,
    power, total_iters)``.
    """
    v.check_number("init_value", init_value, lo=0.0)
    v.check_number("end_value", end_value, lo=0.0)
    v.check_number("power", power, lo=0.0, lo_open=True)
    _check_steps("transition_steps", transition_steps)
    v.check_number("transition_begin", transition_begin, lo=0.0, integer=True)

    def schedule(step):
        frac = _fraction(step, transition_steps, transition_begin)
        return end_value + (init_value - end_value) * (1 - frac) ** power

    return schedule


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> Schedule:
    """Linear interpolation: ``polynomial_schedule`` with ``power=1``::

        eta(t) = init + (end - init) * clip((t - transition_begin) / transition_steps, 0, 1)

    torch's ``LinearLR(start_factor, end_factor, total_iters)`` is
    ``linear_schedule(eta0 * start_factor, eta0 * end_factor, total_iters)``.

    >>> import accel_jax as aj
    >>> [round(float(aj.linear_schedule(0.0, 1.0, 4)(t)), 2) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def cosine_decay(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> Schedule:
    """Cosine decay from ``init_value`` to the floor ``alpha * init_value``::

        f = min(t, decay_steps) / decay_steps
        eta(t) = eta0 * (alpha + (1 - alpha) * ((1 + cos(pi * f)) / 2) ** exponent)

    (optax's ``cosine_decay_schedule``, also exported under that name.)

    Holds the floor after ``decay_steps``: Keras' ``CosineDecay`` (warm-up:
    wrap it in :func:`warmup`) and optax's ``cosine_decay_schedule``. torch's
    ``CosineAnnealingLR(T_max, eta_min)`` is ``cosine_decay(eta0, T_max,
    eta_min / eta0)`` for ``t <= T_max``; past ``T_max`` torch follows the
    cosine back up, this schedule stays at the floor.

    >>> import accel_jax as aj
    >>> [round(float(aj.cosine_decay(1.0, 2, alpha=0.1)(t)), 3) for t in range(4)]
    [1.0, 0.55, 0.1, 0.1]
    """
    v.check_number("init_value", init_value, lo=0.0)
    _check_steps("decay_steps", decay_steps)
    # alpha > 1 is a rise (as optax allows); alpha < 0 would end in a negative value.
    v.check_number("alpha", alpha, lo=0.0)
    v.check_number("exponent", exponent)

    def schedule(step):
        if isinstance(exponent, (int, float)) and exponent == 1:
            return _anneal(init_value, alpha * init_value, _fraction(step, decay_steps), "cos")
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * _fraction(step, decay_steps)))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules`` one after the other, switching at the ``boundaries``::

        eta(t) = schedules[0](t)                     for t < boundaries[0]
                 schedules[i](t - boundaries[i-1])   for boundaries[i-1] <= t < boundaries[i]

    Each schedule restarts its own step count at 0 when it takes over (optax's
    ``join_schedules``; torch's ``SequentialLR``).

    >>> import accel_jax as aj
    >>> s = aj.join_schedules([aj.constant_schedule(1.0), aj.linear_schedule(1.0, 0.0, 2)], [2])
    >>> [round(float(s(t)), 2) for t in range(5)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join_schedules needs one more schedule than boundaries, got {len(schedules)} "
            f"schedules for {len(boundaries)} boundaries."
        )
    for i, s in enumerate(schedules):
        if not callable(s):
            raise ValueError(f"schedules[{i}] must be a schedule (step -> value), got {s!r}.")
    _check_boundaries(boundaries)

    def schedule(step):
        step = jnp.asarray(step)
        value = schedules[0](step)
        for b, s in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(step >= b, s(jnp.maximum(step - b, 0)), value)
        return value

    return schedule


def warmup(schedule: Schedule, warmup_steps: int, init_value: float = 0.0) -> Schedule:
    """Linear warm-up in front of any schedule::

        eta(t) = init + (schedule(0) - init) * t / warmup_steps    for t < warmup_steps
                 schedule(t - warmup_steps)                        afterwards

    The wrapped schedule starts (at its own step 0) when the warm-up ends. Keras'
    ``CosineDecay(eta0, decay_steps, alpha, warmup_target=peak, warmup_steps=w)``
    is ``warmup(cosine_decay(peak, decay_steps, alpha), w, init_value=eta0)``.

    >>> import accel_jax as aj
    >>> s = aj.warmup(aj.constant_schedule(1.0), 4)
    >>> [round(float(s(t)), 2) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if not callable(schedule):
        raise ValueError(f"schedule must be a schedule (step -> value), got {schedule!r}.")
    _check_steps("warmup_steps", warmup_steps)
    v.check_number("init_value", init_value, lo=0.0)

    def ramp(step):
        return _anneal(init_value, schedule(jnp.zeros_like(step)), _fraction(step, warmup_steps))

    return join_schedules([ramp, schedule], [warmup_steps])
