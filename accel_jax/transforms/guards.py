"""Guards: skip steps whose gradients are not finite (NaN or Inf)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    as_array_leaf,
    is_trainable,
)
from accel_jax.combine import _call_update
from accel_jax.fused import forward_kernel_step
from accel_jax.hyperparams import increment


def run_inner_if(
    pred: jax.Array,
    inner: GradientTransformation,
    inner_updates: Any,
    inner_state: Any,
    params: Any,
    extra_args: dict,
) -> tuple[Any, Any]:
    """``inner.update(...)`` when ``pred``, else zero updates and ``inner_state`` as it is.

    A ``lax.cond``: the skipped branch does no work and returns the very arrays
    of ``inner_state`` (bit-identical). The zero updates have the dtypes of the
    inner's output and are *negative* zeros: ``w + (-0.0)`` is ``w`` bit for bit
    for every ``w`` (``-0.0`` included, which ``w + 0.0`` turns into ``+0.0``),
    so applying a skipped step leaves the params exactly as they were.
    """

    def run(operands):
        u, s = operands
        return _call_update(inner, u, s, params, extra_args)

    out_shapes = jax.eval_shape(run, (inner_updates, inner_state))[0]

    def skip(operands):
        _, s = operands
        zeros = jax.tree.map(lambda o: jnp.full(o.shape, -0.0, o.dtype), out_shapes)
        return zeros, s

    return jax.lax.cond(pred, run, skip, (inner_updates, inner_state))


def all_finite(tree: Any) -> jax.Array:
    """True when every inexact leaf of ``tree`` is free of NaN and Inf (a scalar bool)."""
    leaves = [as_array_leaf(x) for x in jax.tree.leaves(tree)]
    flags = [jnp.all(jnp.isfinite(x)) for x in leaves if is_trainable(x)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


class SkipNonFiniteState(NamedTuple):
    """State of :func:`skip_non_finite`.

    ``total_non_finite`` counts every step whose gradients held a NaN or Inf,
    ``consecutive_non_finite`` the current run of them (0 after a finite step).
    """

    inner_state: Any
    total_non_finite: jax.Array  # int32
    consecutive_non_finite: jax.Array  # int32


def skip_non_finite(
    inner: GradientTransformation, max_consecutive_skips: int | None = None
) -> GradientTransformationExtraArgs:
    """Wraps ``inner`` so that a step with a NaN or Inf in the gradients is skipped.

    When any incoming gradient coordinate is not finite, the update is zero and
    ``inner``'s state is returned unchanged (the same arrays, bit for bit), so
    params, moments and step counts are as if the step had not happened. Two
    counters are kept in state (:class:`SkipNonFiniteState`)::

        total_non_finite        number of non-finite steps so far
        consecutive_non_finite  length of the current run of non-finite steps

    With ``max_consecutive_skips=n`` at most ``n`` consecutive steps are skipped:
    from the ``n+1``-th non-finite step in a row on, the gradients are passed to
    ``inner`` as they are, so the failure shows in the params instead of training
    silently standing still. ``None`` skips forever. optax's ``apply_if_finite``
    with ``max_consecutive_errors=n`` behaves the same.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.skip_non_finite(aj.sgd(0.1))
    >>> params = {"w": jnp.ones(2)}
    >>> u, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, tx.init(params), params)
    >>> u["w"].tolist(), int(state.total_non_finite)
    ([-0.0, -0.0], 1)

    The zero updates of a skipped step are negative zeros, so ``apply_updates``
    leaves every param bit for bit as it was (``-0.0`` stays ``-0.0``); under
    :func:`accel_jax.make_step` a skipped step selects the old params, and
    ``inner``'s native kernel (Adam, SGD with momentum, RMSProp) runs the
    steps that are taken.
    """
    v.check_transformation("inner", inner)
    if max_consecutive_skips is not None:
        v.check_number("max_consecutive_skips", max_consecutive_skips, lo=0, integer=True)
    limit = max_consecutive_skips

    def init_fn(params):
        # Distinct buffers per field: a donated step must never see one buffer twice.
        return SkipNonFiniteState(
            inner.init(params), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
        )

    def decide(updates, state):
        finite = all_finite(updates)
        consecutive = jnp.where(finite, 0, increment(state.consecutive_non_finite))
        total = jnp.where(finite, state.total_non_finite, increment(state.total_non_finite))
        apply = finite if limit is None else finite | (consecutive > limit)
        return apply, total.astype(jnp.int32), consecutive.astype(jnp.int32)

    def update_fn(updates, state, params=None, **extra_args):
        v.check_state(state, SkipNonFiniteState, tx, updates)
        apply, total, consecutive = decide(updates, state)
        updates, inner_state = run_inner_if(
            apply, inner, updates, state.inner_state, params, extra_args
        )
        return updates, SkipNonFiniteState(inner_state, total, consecutive)

    def wrap_kernel_step(inner_step):
        def step(params, state, grads, extra_args, required):
            apply, total, consecutive = decide(grads, state)
            new_params, inner_state = select_step(
                apply, inner_step, params, state.inner_state, grads, extra_args, required
            )
            return new_params, SkipNonFiniteState(inner_state, total, consecutive)

        return step

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    return forward_kernel_step(tx, inner, wrap_kernel_step)


def select_step(pred, inner_step, params, inner_state, grads, extra_args, required):
    """``inner_step``'s ``(params, state)`` when ``pred``, else ``(params, inner_state)`` as given.

    The fused-step counterpart of :func:`run_inner_if`: a ``lax.cond`` that
    selects the old params (no zero is added, so ``-0.0`` stays ``-0.0``).
    """

    def run(operands):
        p, s = operands
        return inner_step(p, s, grads, extra_args, required)

    return jax.lax.cond(pred, run, lambda operands: operands, (params, inner_state))
