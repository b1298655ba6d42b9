"""Checks of every number that enters the library (private).

Every public constructor validates its arguments here, so a bad value fails when
the transformation is built, with a ``ValueError`` naming the argument, the value
and the allowed range. The same rules apply wherever a number enters later:

* a hyperparameter kept in state is checked by :func:`accel_jax.set_hyperparams`
  with the rule of its name (:data:`HYPERPARAM_RULES`, the one table both the
  constructors and ``set_hyperparams`` read);
* a user schedule is evaluated once at step 0 when the transformation is built,
  and its value checked like a number;
* inside ``jit``, where values are traced, :func:`accel_jax.checkify_hyperparams`
  checks the values used at every step (opt-in, ``jax.experimental.checkify``).

Numbers are checked in the dtype they are used in (float32 unless
``jax_enable_x64``): a beta of ``1 - 1e-9`` is 1.0 in float32, a learning rate
of ``1e39`` is ``inf``; both are rejected. Strings and bools are not numbers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

_INT32_MAX = 2**31 - 1


def _is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _interval(lo, hi, lo_open, hi_open) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    return f"{left}{lo_s}, {hi_s}{right}"


def _default_float_dtype() -> Any:
    return jax.dtypes.canonicalize_dtype(np.float64)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (
        hasattr(value, "dtype") and np.dtype(value.dtype) == np.bool_
    )


def _as_python_number(name: str, value: Any, what: str) -> float:
    """``value`` as a Python number, refusing strings, bools, containers and arrays of size > 1."""
    if isinstance(value, (str, bytes)) or _is_bool(value):
        raise ValueError(f"{name} must be {what}, got {type(value).__name__} {value!r}.")
    if hasattr(value, "shape") and tuple(value.shape) != ():
        raise ValueError(f"{name} must be {what} (a scalar), got an array of shape "
                         f"{tuple(value.shape)}.")
    try:
        number = complex(value) if np.iscomplexobj(value) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {value!r}.") from None
    if isinstance(number, complex):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    return number


class Rule(NamedTuple):
    """The allowed values of one number: an interval, integer or not, schedule or not."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    allow_schedule: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in {_interval(self.lo, self.hi, self.lo_open, self.hi_open)}"

    def check(self, name: str, value: Any, dtype: Any = None) -> None:
        """Raises ``ValueError`` unless ``value`` satisfies the rule (in ``dtype``).

        ``dtype`` (default: JAX's default float dtype) is the dtype a float value
        is used in; integers are checked against int32. A schedule (when
        allowed) is evaluated at step 0 and its value checked. Traced values
        cannot be inspected and pass (see :func:`accel_jax.checkify_hyperparams`).
        """
        if callable(value) and not hasattr(value, "dtype"):
            if not self.allow_schedule:
                raise ValueError(f"{name} must be {self.describe()}, got a callable {value!r}.")
            self._check_schedule(name, value, dtype)
            return
        if _is_traced(value):
            return
        what = "an integer" if self.integer else "a number"
        if self.allow_schedule:
            what += " or a schedule (step -> value)"
        number = _as_python_number(name, value, what)
        if not math.isfinite(number):
            raise ValueError(f"{name} must be finite ({self.describe()}), got {value!r}.")
        if self.integer:
            if number != int(number):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
            if abs(number) > _INT32_MAX:
                raise ValueError(
                    f"{name} must fit in int32 (|{name}| <= {_INT32_MAX}), got {value!r}."
                )
            used, note = number, ""
        else:
            dtype = np.dtype(dtype if dtype is not None else _default_float_dtype())
            with np.errstate(over="ignore"):
                used = float(np.asarray(number, dtype))
            if not math.isfinite(used):
                raise ValueError(
                    f"{name}={value!r} is not representable in {dtype.name} (it overflows); "
                    f"it must be {self.describe()}."
                )
            note = ""
            if used != number and self._inside(number):  # fine in Python, not once cast
                note = f" (which is {used!r} in {dtype.name})"
        if not self._inside(used):
            interval = _interval(self.lo, self.hi, self.lo_open, self.hi_open)
            shown = value if isinstance(value, (int, float)) else number
            raise ValueError(f"{name} must be in {interval}, got {shown!r}{note}.")

    def _inside(self, x: float) -> bool:
        too_low = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        too_high = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        return not (too_low or too_high)

    def _check_schedule(self, name: str, schedule: Any, dtype: Any) -> None:
        import jax.numpy as jnp

        value = schedule(jnp.zeros([], jnp.int32))
        if _is_traced(value):
            return
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{name}: a schedule must return a scalar, got shape {jnp.shape(value)} at step 0."
            )
        self._replace(allow_schedule=False).check(f"{name} (its schedule at step 0)", value, dtype)

    def holds(self, value: Any) -> jax.Array:
        """A traced bool: ``value`` is finite and in the interval (for run-time checks)."""
        import jax.numpy as jnp

        ok = jnp.isfinite(value)
        if self.lo is not None:
            ok &= (value > self.lo) if self.lo_open else (value >= self.lo)
        if self.hi is not None:
            ok &= (value < self.hi) if self.hi_open else (value <= self.hi)
        return ok


# ----------------------------------------------------------------- the rules
RATE = Rule(lo=0.0, allow_schedule=True)  # learning rates and other step sizes
DECAY = Rule(lo=0.0, hi=1.0, hi_open=True, allow_schedule=True)  # betas, momenta, decays
NON_NEGATIVE = Rule(lo=0.0, allow_schedule=True)  # weight decay, l1 strength
EPS = Rule(lo=0.0)  # numerical-stability constants
FINITE = Rule()  # any finite number (the rule of a name not in the table)

#: The rule of every hyperparameter kept in state, by name. Constructors check
#: these arguments with the same rule (``check_hyperparam``), and
#: ``set_hyperparams`` and the run-time checks read it from here, so a number is
#: accepted or refused the same way wherever it enters. A new transformation that
#: keeps a hyperparameter in state adds its name here (tests/test_registry.py
#: fails for a name missing from this table).
HYPERPARAM_RULES: dict[str, Rule] = {
    "learning_rate": RATE,
    "b1": DECAY,
    "b2": DECAY,
    "momentum": DECAY,
    "decay": DECAY,
    "weight_decay": NON_NEGATIVE,
    "l1": NON_NEGATIVE,
    "scale": Rule(lo=0.0),  # reduce_on_plateau's factor on the updates
    "eps": EPS,  # (kept in state by optax's inject_hyperparams)
    "eps_root": EPS,
    "rho": DECAY,  # adadelta
    "beta": DECAY,  # muon
    "adjusted_learning_rate": RATE,  # muon, per leaf: "adjusted_learning_rate['w']"
    "decay_rate": NON_NEGATIVE,  # adafactor
    "trust_coefficient": Rule(lo=0.0, lo_open=True),  # lars
}

#: Where one transformation's rule for a name differs from the table's:
#: ``(state class name, hyperparameter name) -> rule``.
STATE_RULES: dict[tuple[str, str], Rule] = {
    ("ScaleByLionState", "b1"): Rule(lo=0.0, hi=1.0, allow_schedule=True),
    ("TraceState", "momentum"): Rule(lo=0.0, hi=1.0, allow_schedule=True),  # 1: no friction
    ("ScheduleFreeAveraging", "b1"): Rule(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
}


def hyperparam_rule(name: str, state_type: str | None = None) -> Rule:
    """The rule of the hyperparameter ``name`` kept in a state of class ``state_type``.

    :data:`STATE_RULES`, then :data:`HYPERPARAM_RULES`, then :data:`FINITE`.
    """
    rule = STATE_RULES.get((state_type, name)) if state_type is not None else None
    return rule or HYPERPARAM_RULES.get(name.split("[", 1)[0], FINITE)


def check_hyperparam(name: str, value: Any) -> None:
    """Checks a hyperparameter kept in state with its rule from :data:`HYPERPARAM_RULES`."""
    hyperparam_rule(name).check(name, value)


# ----------------------------------------------------------------- helpers
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
    dtype: Any = None,
) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite number in the interval.

    A float is checked as it is once cast to ``dtype`` (default: JAX's default
    float dtype), an integer against int32. Strings and bools are refused.
    Schedules (callables) are accepted when ``allow_schedule`` and checked at
    step 0. Traced values (e.g. under ``jax.vmap`` or optax's
    ``inject_hyperparams``) cannot be inspected and pass.
    """
    Rule(lo, hi, lo_open, hi_open, integer, allow_schedule).check(name, value, dtype)


def check_rate(name: str, value: Any) -> None:
    """A learning rate (or other step size): a non-negative number or a schedule."""
    RATE.check(name, value)


def check_decay(name: str, value: Any, *, allow_schedule: bool = True) -> None:
    """A decay / momentum / beta: in [0, 1), or a schedule."""
    DECAY._replace(allow_schedule=allow_schedule).check(name, value)


def check_eps(name: str, value: Any) -> None:
    """A numerical-stability constant: a non-negative number."""
    EPS.check(name, value)


def check_bool(name: str, value: Any) -> None:
    """A flag: ``True`` or ``False`` (``"False"`` is a string, not a flag)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")


def check_flags(**flags: Any) -> None:
    """:func:`check_bool` for each ``name=value``."""
    for name, value in flags.items():
        check_bool(name, value)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(c, bool) for c in choices):
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")
    try:
        ok = value in choices
    except TypeError:  # unhashable / incomparable
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")


def check_transformation(name: str, value: Any) -> None:
    """A gradient transformation (an ``(init, update)`` pair, accel_jax's or optax's)."""
    from accel_jax.base import GradientTransformation

    if not isinstance(value, GradientTransformation):
        raise ValueError(
            f"{name} must be a GradientTransformation (e.g. accel_jax.adam(1e-3)), got "
            f"{type(value).__name__} {value!r:.80}."
        )


def state_mismatch(where: str, tx: Any, state: Any, updates: Any) -> ValueError:
    """The error for a state that ``tx`` did not make (another optimizer's checkpoint, say).

    Compares ``state`` with the state ``tx.init`` makes for params shaped like
    ``updates`` and names the first path where they differ.
    """
    try:
        expected = jax.eval_shape(tx.init, updates)
    except Exception:  # noqa: BLE001 - the message below is still right without the detail
        expected = None

    def describe(node):
        fields = getattr(node, "_fields", None)
        name = type(node).__name__
        return f"{name}({', '.join(fields)})" if fields is not None else name

    detail = ""
    if expected is not None:
        is_node = lambda x: hasattr(x, "_fields")  # noqa: E731
        got = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_node)[0]
        want = jax.tree_util.tree_flatten_with_path(expected, is_leaf=is_node)[0]
        for (gp, g), (wp, w) in zip(got, want, strict=False):
            if jax.tree_util.keystr(gp) != jax.tree_util.keystr(wp) or type(g) is not type(w):
                path = f"{where}{jax.tree_util.keystr(wp)}" or "<root>"
                detail = f" at path {path} it expects {describe(w)}, got {describe(g)};"
                break
        else:
            if len(got) != len(want):
                detail = f" it has {len(got)} state nodes at {where}, expected {len(want)};"
    return ValueError(
        "the optimizer state does not match this optimizer:"
        f"{detail or ' at path ' + where + ' it expects ' + describe(expected)}"
        " was it initialised by (or restored from a checkpoint of) another optimizer? Restore into "
        "the structure of tx.init(params) of the optimizer that saved it."
    )


def check_state(state: Any, state_type: type, tx: Any, updates: Any) -> None:
    """Raises :func:`state_mismatch`'s error unless ``state`` is a ``state_type``."""
    if not isinstance(state, state_type):
        raise state_mismatch("", tx, state, updates)


def check_dtype(name: str, value: Any) -> None:
    """None, or a floating or complex dtype (complex params keep complex moments)."""
    if value is None:
        return
    import jax.numpy as jnp

    what = "a floating or complex dtype or None"
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}.") from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"{name} must be {what}, got {value!r}.")
