"""Constraints and sanitizers on the updates: zero NaNs, keep params non-negative."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax.base import GradientTransformation, require_params


class ZeroNansState(NamedTuple):
    """State of :func:`zero_nans`: per leaf, whether the last updates held a NaN."""

    found_nan: Any


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates by 0 and records, per leaf, whether any was found.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.zero_nans()
    >>> u, s = tx.update({"w": jnp.array([jnp.nan, 1.0])}, tx.init({"w": jnp.zeros(2)}))
    >>> u["w"].tolist(), bool(s.found_nan["w"])
    ([0.0, 1.0], True)
    """

    def init_fn(params):
        return ZeroNansState(jax.tree.map(lambda _: jnp.zeros([], bool), params))

    def update_fn(updates, state, params=None):
        del state, params
        found = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        updates = jax.tree.map(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return updates, ZeroNansState(found)

    return GradientTransformation(init_fn, update_fn)


class NonNegativeParamsState(NamedTuple):
    """State of :func:`keep_params_nonnegative` (empty)."""


def keep_params_nonnegative() -> GradientTransformation:
    """Clips the updates so that ``params + updates >= 0``: where the step would go below 0,
    the update becomes ``-params`` (the param lands on 0). Place it last in a chain.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.keep_params_nonnegative()
    >>> p = jnp.array([1.0, 1.0])
    >>> tx.update(jnp.array([-2.0, -0.5]), tx.init(p), p)[0].tolist()
    [-1.0, -0.5]
    """

    def init_fn(params):
        del params
        return NonNegativeParamsState()

    def update_fn(updates, state, params=None):
        require_params(params, "keep_params_nonnegative")
        updates = jax.tree.map(
            lambda p, u: None if p is None else jnp.where(p + u < 0.0, -p, u),
            params, updates, is_leaf=lambda x: x is None,
        )
        return updates, state

    return GradientTransformation(init_fn, update_fn)
