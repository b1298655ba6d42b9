"""Construction-time checks of hyperparameters (private).

Every public constructor validates its arguments here, so a bad value fails when
the transformation is built, with a message naming the argument, the value and
the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _interval(lo, hi, lo_open, hi_open) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return f"{left}{lo_s}, {hi_s}{right}"


def check_number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_schedule: bool = False,
    integer: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number in the interval.

    Schedules (callables) are accepted when ``allow_schedule``; their values are
    the schedule's own business (schedules validate their own arguments). Traced
    values (e.g. a learning rate under ``jax.vmap``) cannot be inspected and pass.
    """
    if callable(value):
        if allow_schedule:
            return
        raise ValueError(f"{name} must be a number, got a callable {value!r}.")
    if _is_traced(value):
        return
    what = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        extra = " or a schedule (step -> value)" if allow_schedule else ""
        raise ValueError(f"{name} must be {what}{extra}, got {value!r}.") from None
    if integer and (isinstance(value, bool) or number != int(number)):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    too_low = lo is not None and (number <= lo if lo_open else number < lo)
    too_high = hi is not None and (number >= hi if hi_open else number > hi)
    if too_low or too_high:
        raise ValueError(
            f"{name} must be in {_interval(lo, hi, lo_open, hi_open)}, got {value!r}."
        )


def check_rate(name: str, value: Any) -> None:
    """A learning rate (or other step size): a non-negative number or a schedule."""
    check_number(name, value, lo=0.0, allow_schedule=True)


def check_decay(name: str, value: Any, *, allow_schedule: bool = True) -> None:
    """A decay / momentum / beta: in [0, 1), or a schedule."""
    check_number(name, value, lo=0.0, hi=1.0, hi_open=True, allow_schedule=allow_schedule)


def check_eps(name: str, value: Any) -> None:
    """A numerical-stability constant: a non-negative number."""
    check_number(name, value, lo=0.0)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")


def check_dtype(name: str, value: Any) -> None:
    """None, or a floating dtype."""
    if value is None:
        return
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be a floating dtype or None, got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype or None, got {value!r}.")
