"""Regularization: weight decay (decoupled or coupled L2).

One transformation, :func:`add_decayed_weights`, serves both: placed *before*
the optimizer's scaling in a chain it is coupled L2 regularization (the decay
enters the moments, torch.optim's ``weight_decay``); placed *after* it, just
before the learning rate, it is decoupled weight decay (AdamW).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformation, ScalarOrSchedule, compute_dtype, leafwise
from accel_jax.hyperparams import current_hyperparams, increment, init_hyperparams


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights`: step count and the values used last."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    learning_rate: ScalarOrSchedule | None = None,
) -> GradientTransformation:
    """Adds the decayed weights to the updates::

        u <- u + lambda_t * w                        (learning_rate=None)
        u <- u - eta_t * lambda_t * w                (learning_rate given)

    The first form goes before the learning-rate scaling (coupled L2 when it is
    first in the chain, decoupled decay as in AdamW when it follows the adaptive
    scaling). The second form is the complete decoupled step, for chains in which
    the learning rate is not the last factor (Keras' SGD with momentum and
    ``weight_decay``). ``mask`` (a pytree of bools, or a function of the params
    returning one) selects the leaves that decay; others pass through.

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    v.check_number("weight_decay", weight_decay, lo=0.0, allow_schedule=True)
    if learning_rate is not None:
        v.check_rate("learning_rate", learning_rate)
    specs = {"weight_decay": weight_decay}
    if learning_rate is not None:
        specs["learning_rate"] = learning_rate

    def init_fn(params):
        del params
        return AddDecayedWeightsState(jnp.zeros([], jnp.int32), init_hyperparams(**specs))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "add_decayed_weights needs the params: call update(updates, state, params)."
            )
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        factor = hp["weight_decay"]
        if learning_rate is not None:
            factor = -hp["learning_rate"] * factor

        def decay(g, w):
            dt = compute_dtype(g, w)
            return (g.astype(dt) + factor.astype(dt) * w.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(decay), updates, params)
        return updates, AddDecayedWeightsState(increment(state.count), hp)

    tx = GradientTransformation(init_fn, update_fn)
    if mask is None:
        return tx
    from accel_jax.combine import masked

    return masked(tx, mask)
