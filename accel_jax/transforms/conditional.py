"""Conditional steps: run, mask or skip an inner transformation by step or by value.

optax's ``conditionally_transform``, ``conditionally_mask``, ``apply_if_finite`` and
``apply_every``, with their state layouts. (:func:`accel_jax.skip_non_finite` is
the accel_jax form of ``apply_if_finite``.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
)
from accel_jax.combine import _call_update
from accel_jax.hyperparams import increment


def _zeros(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def _check_conditional(inner, should_transform_fn, forward_extra_args) -> None:
    v.check_transformation("inner", inner)
    if not callable(should_transform_fn):
        raise ValueError(
            "should_transform_fn must be a function of the step count, got "
            f"{should_transform_fn!r}."
        )
    v.check_flags(forward_extra_args=forward_extra_args)


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform`: the inner state and the step count."""

    inner_state: Any
    step: jax.Array  # int32


def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: Callable[..., Any],
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` at the steps where ``should_transform_fn(step)`` is True; at the others
    the updates pass through unchanged and the inner state is kept.

    ``forward_extra_args=True`` also passes ``update``'s extra keyword arguments
    to ``should_transform_fn``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.conditionally_transform(aj.scale(10.0), lambda step: step >= 1)
    >>> s = tx.init(jnp.zeros(1))
    >>> u0, s = tx.update(jnp.ones(1), s)
    >>> u1, s = tx.update(jnp.ones(1), s)
    >>> u0.tolist(), u1.tolist()
    ([1.0], [10.0])
    """
    _check_conditional(inner, should_transform_fn, forward_extra_args)

    def init_fn(params):
        return ConditionallyTransformState(inner.init(params), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        kwargs = extra_args if forward_extra_args else {}
        updates, inner_state = jax.lax.cond(
            should_transform_fn(state.step, **kwargs),
            lambda: _call_update(inner, updates, state.inner_state, params, extra_args),
            lambda: (updates, state.inner_state),
        )
        return updates, ConditionallyTransformState(inner_state, increment(state.step))

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), inner)


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask`: the step count and the inner state."""

    step: jax.Array  # int32
    inner_state: Any


def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: Callable[..., Any],
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` at the steps where ``should_transform_fn(step)`` is True; at the others
    the updates are zeros and the inner state is kept.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.conditionally_mask(aj.sgd(1.0), lambda step: step % 2 == 1)
    >>> s = tx.init(jnp.zeros(1))
    >>> u0, s = tx.update(jnp.ones(1), s)
    >>> u1, s = tx.update(jnp.ones(1), s)
    >>> u0.tolist(), u1.tolist()
    ([0.0], [-1.0])
    """
    _check_conditional(inner, should_transform_fn, forward_extra_args)

    def init_fn(params):
        return ConditionallyMaskState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        kwargs = extra_args if forward_extra_args else {}
        updates, inner_state = jax.lax.cond(
            should_transform_fn(state.step, **kwargs),
            lambda: _call_update(inner, updates, state.inner_state, params, extra_args),
            lambda: (_zeros(updates), state.inner_state),
        )
        return updates, ConditionallyMaskState(increment(state.step), inner_state)

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), inner)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite` (optax's layout)."""

    notfinite_count: jax.Array  # int32: non-finite steps in a row
    last_finite: jax.Array  # bool
    total_notfinite: jax.Array  # int32
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformationExtraArgs:
    """Runs ``inner`` only on finite updates: a step with an inf or NaN returns zeros and
    keeps the inner state, unless more than ``max_consecutive_errors`` such steps came
    in a row (then it goes through, so the divergence shows).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.apply_if_finite(aj.sgd(1.0), max_consecutive_errors=2)
    >>> u, s = tx.update(jnp.array([jnp.nan]), tx.init(jnp.zeros(1)))
    >>> u.tolist(), int(s.total_notfinite)
    ([0.0], 1)
    """
    v.check_transformation("inner", inner)
    v.check_number("max_consecutive_errors", max_consecutive_errors, lo=0.0, integer=True)

    def init_fn(params):
        return ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.ones([], bool),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        leaves = jax.tree.leaves(updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else (
            jnp.ones([], bool))
        bad_run = jnp.where(finite, 0, increment(state.notfinite_count)).astype(jnp.int32)
        updates, inner_state = jax.lax.cond(
            finite | (bad_run > max_consecutive_errors),
            lambda: _call_update(inner, updates, state.inner_state, params, extra_args),
            lambda: (_zeros(updates), state.inner_state),
        )
        total = jnp.where(finite, state.total_notfinite, increment(state.total_notfinite))
        return updates, ApplyIfFiniteState(bad_run, finite, total.astype(jnp.int32), inner_state)

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), inner)


class ApplyEvery(NamedTuple):
    """State of :func:`apply_every` (optax's name): the count and the accumulated updates."""

    count: jax.Array  # int32
    grad_acc: Any


def apply_every(k: int = 1) -> GradientTransformation:
    """Sums the updates of ``k`` steps and emits the sum every ``k``-th step (zeros between).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.apply_every(2)
    >>> s = tx.init(jnp.zeros(1))
    >>> u0, s = tx.update(jnp.ones(1), s)
    >>> u1, s = tx.update(jnp.full(1, 2.0), s)
    >>> u0.tolist(), u1.tolist()
    ([0.0], [3.0])
    """
    v.check_number("k", k, lo=1.0, integer=True)

    def init_fn(params):
        return ApplyEvery(jnp.zeros([], jnp.int32), _zeros(params))

    def update_fn(updates, state, params=None):
        del params
        phase = state.count % k
        acc = jax.tree.map(
            lambda g, a: jnp.where(phase != 0, a, jnp.zeros_like(a)) + g, updates, state.grad_acc
        )
        emit = phase == k - 1
        out = jax.tree.map(lambda a: jnp.where(emit, a, jnp.zeros_like(a)), acc)
        return out, ApplyEvery(increment(state.count) % k, acc)

    return GradientTransformation(init_fn, update_fn)
