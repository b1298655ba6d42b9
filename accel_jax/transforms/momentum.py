"""Momentum: heavy-ball and Nesterov velocity, and an exponential moving average."""

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
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_state


class TraceState(NamedTuple):
    """State of :func:`trace`: step count, momentum used last, and the velocity."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    trace: Any


def _one_of(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """The value given under ``name`` or under its alias ``alias`` (not both)."""
    if value is not None and alias_value is not None:
        raise ValueError(f"give {name} or {alias}, not both (got {value!r} and {alias_value!r}).")
    return value if value is not None else alias_value


def trace(
    decay: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    momentum: ScalarOrSchedule | None = None,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Heavy-ball or Nesterov momentum (the velocity is a sum, not an average).

    With momentum ``beta_t`` (``decay`` in optax's name, ``momentum`` here; a
    number in [0, 1] -- 0 is high friction, 1 none -- or a schedule)::

        v_t = beta_t * v_{t-1} + g_t
        u_t = v_t                      (heavy ball)
        u_t = g_t + beta_t * v_t       (Nesterov, Sutskever et al. 2013 form)

    This is torch.optim.SGD's buffer (``dampening=0``). Placed *after* the
    learning-rate scaling in a chain, the velocity accumulates ``-eta_t * g_t``
    instead, which is Keras' convention (see :func:`accel_jax.sgd`).
    ``mu_dtype`` stores the velocity in another dtype (computations run in the
    wider of the gradient's and the state's dtype).

    ``accumulator_dtype`` is optax's name for ``mu_dtype``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.trace(0.9)
    >>> u, s = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
    >>> u, s = tx.update(jnp.ones(1), s)
    >>> round(float(u[0]), 6)  # 0.9 * 1 + 1
    1.9

    References: Polyak 1964; Sutskever, Martens, Dahl, Hinton, ICML 2013.
    """
    momentum = _one_of("decay", decay, "momentum", momentum)
    if momentum is None:
        raise TypeError("trace() needs the momentum (decay=...).")
    mu_dtype = _one_of("accumulator_dtype", accumulator_dtype, "mu_dtype", mu_dtype)
    v.STATE_RULES[("TraceState", "momentum")].check("momentum", momentum)
    v.check_flags(nesterov=nesterov)
    v.check_dtype("mu_dtype", mu_dtype)
    specs = {"momentum": momentum}

    init_fn = init_state(TraceState, specs, mu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.trace, "the optimizer state (momentum trace)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        beta = hp["momentum"]

        def velocity(g, t):
            dt = compute_dtype(g, t)
            return (beta.astype(dt) * t.astype(dt) + g.astype(dt)).astype(t.dtype)

        new_trace = jax.tree.map(leafwise(velocity, keep=1), updates, state.trace)

        def output(g, t):
            if not nesterov:
                return t.astype(g.dtype)
            dt = compute_dtype(g, t)
            return (g.astype(dt) + beta.astype(dt) * t.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(output), updates, new_trace)
        return updates, TraceState(increment(state.count), hp, new_trace)

    return GradientTransformation(init_fn, update_fn)


class EmaState(NamedTuple):
    """State of :func:`ema`: step count, decay used last, and the average."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    ema: Any


def ema(
    decay: ScalarOrSchedule,
    debias: bool = True,
    accumulator_dtype: Any = None,
    *,
    mu_dtype: Any = None,
) -> GradientTransformation:
    """Exponential moving average of the updates::

        m_t = decay * m_{t-1} + (1 - decay) * g_t
        u_t = m_t / (1 - decay^t)      (debias=True; u_t = m_t otherwise)

    With a scheduled decay the debiasing uses the current decay, as torch does
    for Adam's beta1. ``accumulator_dtype`` is optax's name for ``mu_dtype``.
    """
    mu_dtype = _one_of("accumulator_dtype", accumulator_dtype, "mu_dtype", mu_dtype)
    v.check_flags(debias=debias)
    v.check_decay("decay", decay)
    v.check_dtype("mu_dtype", mu_dtype)
    specs = {"decay": decay}

    init_fn = init_state(EmaState, specs, mu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.ema, "the optimizer state (ema)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        d = hp["decay"]
        count = increment(state.count)

        new_ema = update_moment(updates, state.ema, d, 1)
        inv_bc = 1 / (1 - d ** count.astype(float_dtype())) if debias else jnp.ones_like(d)
        updates = jax.tree.map(
            leafwise(lambda g, m: (m.astype(compute_dtype(g, m)) * inv_bc.astype(
                compute_dtype(g, m))).astype(g.dtype)),
            updates,
            new_ema,
        )
        return updates, EmaState(count, hp, new_ema)

    return GradientTransformation(init_fn, update_fn)
