"""optax's ``MultiSteps``: gradient accumulation as an optimizer wrapper class.

:func:`accel_jax.accumulate_gradients` is the transformation form; this class is
optax's drop-in (``gradient_transformation()``, ``has_updated()``, a callable
``every_k_schedule``, ``use_grad_mean``, ``should_skip_update_fn``), with
:func:`skip_not_finite` and :func:`skip_large_updates` as skip functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
)
from accel_jax.combine import _call_update
from accel_jax.hyperparams import increment


def skip_not_finite(updates: Any, gradient_step: Any, params: Any) -> tuple[jax.Array, dict]:
    """Skip a mini-step whose updates hold an inf or a NaN (a ``should_skip_update_fn``).

    Returns ``(should_skip, {"should_skip", "num_not_finite"})``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> bool(aj.skip_not_finite({"w": jnp.array([1.0, jnp.nan])}, 0, None)[0])
    True
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(updates)]
    num = jnp.sum(jnp.stack(counts)) if counts else jnp.zeros([], jnp.int32)
    skip = num > 0
    return skip, {"should_skip": skip, "num_not_finite": num}


def skip_large_updates(
    updates: Any, gradient_step: Any, params: Any, max_squared_norm: float
) -> tuple[jax.Array, dict]:
    """Skip a mini-step whose squared global norm is not below ``max_squared_norm``.

    Use as ``functools.partial(skip_large_updates, max_squared_norm=...)``;
    returns ``(should_skip, {"should_skip", "norm_squared"})`` (NaN norms skip).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> bool(aj.skip_large_updates({"w": jnp.full(4, 3.0)}, 0, None, 10.0)[0])
    True
    """
    del gradient_step, params
    squares = [jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(updates)]
    norm_sq = jnp.sum(jnp.stack(squares)) if squares else jnp.zeros([])
    skip = ~(norm_sq < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": norm_sq}


class MultiStepsState(NamedTuple):
    """State of :class:`MultiSteps` (optax's layout)."""

    mini_step: jax.Array  # int32: mini-steps accumulated since the last real step
    gradient_step: jax.Array  # int32: real steps taken
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


def _no_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.zeros([], bool), ()


class MultiSteps:
    """Accumulates ``k`` mini-step gradients, then lets ``opt`` take one step.

    Between real steps ``update`` returns zeros; at the ``k``-th mini-step it
    passes the mean (``use_grad_mean=True``) or the sum of the accumulated
    gradients to ``opt``. ``every_k_schedule`` is an int or a function of the
    real-step count returning ``k``. A mini-step for which
    ``should_skip_update_fn(updates, gradient_step, params)`` returns True is
    ignored (its monitoring output lands in ``state.skip_state``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> ms = aj.MultiSteps(aj.sgd(1.0), every_k_schedule=2)
    >>> state = ms.init(jnp.zeros(1))
    >>> u, state = ms.update(jnp.ones(1), state)
    >>> u, state = ms.update(jnp.full(1, 3.0), state)
    >>> u.tolist(), bool(ms.has_updated(state))
    ([-2.0], True)

    Reference: optax.MultiSteps.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], jax.Array],
        use_grad_mean: bool = True,
        should_skip_update_fn: Callable | None = None,
        accumulator_dtype: Any = jnp.float32,
    ):
        if isinstance(every_k_schedule, int):
            if every_k_schedule < 1:
                raise ValueError(f"every_k_schedule must be >= 1, got {every_k_schedule!r}.")
            k = every_k_schedule
            every_k_schedule = lambda step: k  # noqa: E731
        self._opt = opt
        self._every_k = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._should_skip = should_skip_update_fn or _no_skip
        self._acc_dtype = jax.dtypes.canonicalize_dtype(accumulator_dtype)

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    def init(self, params: Any) -> MultiStepsState:
        step = jnp.zeros([], jnp.int32)
        zeros = jax.tree.map(jnp.zeros_like, params)
        _, skip_state = self._should_skip(zeros, step, params)
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=step,
            inner_opt_state=self._opt.init(params),
            acc_grads=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), self._acc_dtype), params),
            skip_state=skip_state,
        )

    def _accumulate(self, g, acc, n):
        if self._use_grad_mean:  # running mean: acc + (g - acc) / (n + 1)
            return acc + (g - acc) / (n + 1).astype(acc.dtype)
        return acc + g

    def update(self, updates, state: MultiStepsState, params=None, **extra_args):
        k = self._every_k(state.gradient_step)
        skip, skip_state = self._should_skip(updates, state.gradient_step, params)
        if (jnp.dtype(skip.dtype), jnp.shape(skip)) != (jnp.dtype(bool), ()):
            raise ValueError(
                "should_skip_update_fn must return a boolean scalar, got dtype "
                f"{skip.dtype} and shape {jnp.shape(skip)}."
            )
        acc = jax.tree.map(
            lambda g, a: self._accumulate(g.astype(a.dtype), a, state.mini_step),
            updates, state.acc_grads,
        )
        inner_in = jax.tree.map(lambda a, g: a.astype(jnp.asarray(g).dtype), acc, updates)
        out, inner_state = _call_update(
            self._opt, inner_in, state.inner_opt_state, params, extra_args
        )
        emit = state.mini_step == k - 1
        keep = lambda new, old: jnp.where(skip, old, new).astype(old.dtype)  # noqa: E731
        new_state = MultiStepsState(
            mini_step=keep(increment(state.mini_step) % k, state.mini_step),
            gradient_step=keep(
                jnp.where(emit, increment(state.gradient_step), state.gradient_step),
                state.gradient_step,
            ),
            inner_opt_state=jax.tree.map(
                lambda new, old: keep(jnp.where(emit, new, old), old),
                inner_state, state.inner_opt_state,
            ),
            acc_grads=jax.tree.map(
                lambda a, old: keep(jnp.where(emit, jnp.zeros_like(a), a), old),
                acc, state.acc_grads,
            ),
            skip_state=skip_state,
        )
        out = jax.tree.map(lambda u: jnp.where(emit & ~skip, u, jnp.zeros_like(u)), out)
        return out, new_state

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """True right after a real step (``mini_step == 0`` and at least one step taken)."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        tx = GradientTransformationExtraArgs(self.init, self.update)
        return forward_params_tree(tx, self._opt)
