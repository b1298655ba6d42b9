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
counterpart, with the off-by-one and end-of-schedule differences.
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


def cosine_restarts(
    init_value: float,
    first_decay_steps: int,
    t_mul: float = 2.0,
    m_mul: float = 1.0,
    alpha: float = 0.0,
) -> Schedule:
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Period ``i`` lasts ``T_i = first_decay_steps * t_mul**i`` steps and starts at
    ``m_mul**i * eta0``; within it, at ``x`` steps from its start::

        eta(t) = eta0 * (alpha + (1 - alpha) * m_mul**i * (1 + cos(pi * x / T_i)) / 2)

    Keras' ``CosineDecayRestarts`` with the same arguments; torch's
    ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` is
    ``cosine_restarts(eta0, T_0, T_mult, 1.0, eta_min / eta0)``.

    >>> import accel_jax as aj
    >>> s = aj.cosine_restarts(1.0, 2, t_mul=1.0)
    >>> [round(float(s(t)), 2) for t in range(5)]
    [1.0, 0.5, 1.0, 0.5, 1.0]
    """
    v.check_number("init_value", init_value, lo=0.0)
    _check_steps("first_decay_steps", first_decay_steps)
    v.check_number("t_mul", t_mul, lo=1.0)
    v.check_number("m_mul", m_mul, lo=0.0)
    v.check_number("alpha", alpha, lo=0.0, hi=1.0)

    def schedule(step):
        dt = float_dtype()
        frac = _float(step) / first_decay_steps  # in units of the first period
        if t_mul == 1.0:
            i = jnp.floor(frac)
            start, length = i, jnp.ones_like(frac)
        else:
            # Periods start at (t_mul**i - 1) / (t_mul - 1); log gives i up to rounding,
            # which one comparison each way corrects.
            start_of = lambda k: (t_mul**k - 1) / (t_mul - 1)
            i = jnp.floor(jnp.log1p(frac * (t_mul - 1)) / math.log(t_mul))
            i = jnp.where(start_of(i + 1) <= frac, i + 1, i)
            i = jnp.where(start_of(i) > frac, i - 1, i)
            start, length = start_of(i), jnp.asarray(t_mul, dt) ** i
        x = jnp.clip((frac - start) / length, 0.0, 1.0)
        peak = jnp.asarray(m_mul, dt) ** i
        return init_value * (alpha + (1 - alpha) * _anneal(peak, jnp.zeros_like(peak), x, "cos"))

    return schedule


def _one_cycle_knots(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """The steps at which one-cycle's phases end (torch's ``OneCycleLR`` phase ``end_step``)."""
    _check_steps("total_steps", total_steps)
    v.check_number("pct_start", pct_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    up = pct_start * total_steps - 1
    knots = [0.0, up, 2 * up, total_steps - 1] if three_phase else [0.0, up, total_steps - 1]
    if any(a >= b for a, b in pairwise(knots)):
        raise ValueError(
            f"one_cycle: total_steps={total_steps} with pct_start={pct_start} leaves a phase "
            f"of zero length (phase ends at steps {knots[1:]}); use more steps or another "
            "pct_start."
        )
    return knots


def _along_knots(knots: list[float], values: list[float], strategy: str) -> Schedule:
    """Anneals from ``values[i]`` to ``values[i+1]`` between ``knots[i]`` and ``knots[i+1]``."""

    def schedule(step):
        t = _float(step)
        value = jnp.full(jnp.shape(t), values[-1], float_dtype())
        for k in reversed(range(len(knots) - 1)):
            frac = _fraction(t, knots[k + 1] - knots[k], knots[k])
            phase = _anneal(values[k], values[k + 1], frac, strategy)
            value = jnp.where(t <= knots[k + 1], phase, value)
        return value

    return schedule


def one_cycle(
    max_value: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle learning-rate policy (Smith & Topin 2017), as torch's ``OneCycleLR``.

    With ``initial = max_value / div_factor`` and ``final = initial / final_div_factor``,
    and ``p = pct_start * total_steps - 1``:

    * two phases (default): ``initial -> max_value`` over steps ``[0, p]``, then
      ``max_value -> final`` over ``[p, total_steps - 1]``;
    * ``three_phase=True``: ``initial -> max_value`` over ``[0, p]``,
      ``max_value -> initial`` over ``[p, 2p]``, ``initial -> final`` over
      ``[2p, total_steps - 1]``.

    Each phase anneals along half a cosine (``anneal_strategy="cos"``) or linearly
    (``"linear"``). After ``total_steps - 1`` the rate stays at ``final`` (torch
    raises an error past ``total_steps``). Pair it with
    :func:`one_cycle_momentum` for the inverse momentum cycle.

    >>> import accel_jax as aj
    >>> s = aj.one_cycle(0.1, 100)
    >>> round(float(s(0)), 6), round(float(s(29)), 6), round(float(s(99)), 9)
    (0.004, 0.1, 4e-07)
    """
    v.check_number("max_value", max_value, lo=0.0)
    v.check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
    v.check_number("div_factor", div_factor, lo=0.0, lo_open=True)
    v.check_number("final_div_factor", final_div_factor, lo=0.0, lo_open=True)
    knots = _one_cycle_knots(total_steps, pct_start, three_phase)
    initial = max_value / div_factor
    final = initial / final_div_factor
    values = [initial, max_value, initial, final] if three_phase else [initial, max_value, final]
    return _along_knots(knots, values, anneal_strategy)


def one_cycle_momentum(
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    three_phase: bool = False,
) -> Schedule:
    """The momentum cycle that goes with :func:`one_cycle`, inverse to the rate.

    Momentum anneals ``max_momentum -> base_momentum`` while the rate rises, and
    back ``base_momentum -> max_momentum`` while it falls (the third phase of
    ``three_phase`` holds ``max_momentum``), over the same phases as
    :func:`one_cycle` with the same arguments: torch's ``OneCycleLR`` with
    ``cycle_momentum=True``. Pass it as ``momentum=`` of :func:`accel_jax.sgd`
    or ``b1=`` of :func:`accel_jax.adam` (torch cycles Adam's beta1).

    >>> import accel_jax as aj
    >>> m = aj.one_cycle_momentum(100)
    >>> round(float(m(0)), 6), round(float(m(29)), 6), round(float(m(99)), 6)
    (0.95, 0.85, 0.95)
    """
    v.check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
    v.check_number("base_momentum", base_momentum, lo=0.0, hi=1.0, hi_open=True)
    v.check_number("max_momentum", max_momentum, lo=0.0, hi=1.0, hi_open=True)
    knots = _one_cycle_knots(total_steps, pct_start, three_phase)
    hi, lo = max_momentum, base_momentum
    values = [hi, lo, hi, hi] if three_phase else [hi, lo, hi]
    return _along_knots(knots, values, anneal_strategy)
