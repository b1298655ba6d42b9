"""Gradient accumulation: one optimizer step per ``k`` micro-batches."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    as_array_leaf,
    check_structure,
    compute_dtype,
    is_trainable,
    leafwise,
    zeros_like_tree,
)
from accel_jax.fused import forward_kernel_step
from accel_jax.transforms.guards import run_inner_if, select_step


class AccumulateGradientsState(NamedTuple):
    """State of :func:`accumulate_gradients`.

    ``micro_step`` is the number of gradients in ``mean_grads`` (0 right after an
    optimizer step), ``mean_grads`` their running mean, ``inner_state`` the state
    of the wrapped optimizer.
    """

    micro_step: jax.Array  # int32, in [0, every_k) (more after a restore: emits at once)
    inner_state: Any
    mean_grads: Any


def accumulate_gradients(
    inner: GradientTransformation, every_k: int, *, acc_dtype: Any = None
) -> GradientTransformationExtraArgs:
    """Averages ``every_k`` micro-batch gradients, then makes one step of ``inner``.

    For micro-step ``j = 1 .. k`` of each group of ``k`` calls::

        a_j = a_{j-1} + (g_j - a_{j-1}) / j        (a_0 = 0; a_k = mean of g_1..g_k)
        u_j = 0                                    (j < k: params unchanged)
        u_k, s <- inner.update(a_k, s, params)     (then a is reset to 0)

    so ``k`` calls with micro-batches equal one call with the mean gradient of
    the large batch, and ``inner``'s step count (hence its schedules and bias
    corrections) advances once per ``k`` calls. Memory: one running mean shaped
    like the params, not ``k`` gradients; ``acc_dtype`` stores it in another
    dtype (float32 for bf16 gradients, say; ``inner`` still receives the mean in
    the gradients' dtype). ``inner`` runs only on the ``k``-th call (a
    ``lax.cond``). The same numbers as ``optax.MultiSteps(inner, every_k)``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.accumulate_gradients(aj.sgd(1.0), every_k=2)
    >>> params = {"w": jnp.zeros(1)}
    >>> state = tx.init(params)
    >>> u1, state = tx.update({"w": jnp.array([1.0])}, state, params)
    >>> u2, state = tx.update({"w": jnp.array([3.0])}, state, params)
    >>> u1["w"].tolist(), u2["w"].tolist()      # -0.0: adding it changes no bit
    ([-0.0], [-2.0])
    """
    v.check_transformation("inner", inner)
    v.check_number("every_k", every_k, lo=1, integer=True)
    v.check_dtype("acc_dtype", acc_dtype)
    every_k = int(every_k)

    def init_fn(params):
        return AccumulateGradientsState(
            jnp.zeros([], jnp.int32), inner.init(params), zeros_like_tree(params, acc_dtype)
        )

    def accumulate(updates, state):
        updates = jax.tree.map(as_array_leaf, updates)
        check_structure(updates, state.mean_grads, "the optimizer state (mean_grads)")
        count = state.micro_step + 1

        def running_mean(g, a):
            dt = compute_dtype(g, a)
            m = a.astype(dt)
            return (m + (g.astype(dt) - m) / count.astype(dt)).astype(a.dtype)

        means = jax.tree.map(leafwise(running_mean, keep=1), updates, state.mean_grads)
        # ">=", not "==": a state restored into a smaller every_k (micro_step past the
        # end) emits at once instead of never again (as optax.MultiSteps).
        emit = state.micro_step >= every_k - 1
        # The inner optimizer sees the gradients' dtypes; leaves it does not act on (float0
        # gradients of integer params) pass as given.
        inner_in = jax.tree.map(
            lambda g, a: a.astype(g.dtype) if is_trainable(g) else g, updates, means
        )
        reset = jax.tree.map(leafwise(lambda a: jnp.where(emit, jnp.zeros_like(a), a)), means)
        micro_step = jnp.where(emit, 0, count).astype(jnp.int32)
        return emit, inner_in, micro_step, reset

    def update_fn(updates, state, params=None, **extra_args):
        v.check_state(state, AccumulateGradientsState, tx, updates)
        emit, inner_in, micro_step, reset = accumulate(updates, state)
        updates, inner_state = run_inner_if(
            emit, inner, inner_in, state.inner_state, params, extra_args
        )
        return updates, AccumulateGradientsState(micro_step, inner_state, reset)

    def wrap_kernel_step(inner_step):
        def step(params, state, grads, extra_args, required):
            emit, inner_in, micro_step, reset = accumulate(grads, state)
            new_params, inner_state = select_step(
                emit, inner_step, params, state.inner_state, inner_in, extra_args, required
            )
            return new_params, AccumulateGradientsState(micro_step, inner_state, reset)

        return step

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    return forward_kernel_step(tx, inner, wrap_kernel_step)
