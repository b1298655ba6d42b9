"""Cyclic schedules: cosine annealing with warm restarts, and the one-cycle policy.

Pure functions ``step -> value`` with the conventions of :mod:`accel_jax.schedules`
(``step`` counts the updates already applied; jit-safe; default float dtype; arguments
validated when the schedule is built).
"""

from __future__ import annotations

import math
from itertools import pairwise

import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import Schedule
from accel_jax.hyperparams import float_dtype
from accel_jax.schedules import ANNEAL_STRATEGIES, _anneal, _check_steps, _float, _fraction


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
