"""Parameter averaging: an exponential moving (EMA) or uniform (Polyak) average of the params."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    apply_updates,
    compute_dtype,
    leafwise,
    require_params,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_hyperparams


class AverageParamsState(NamedTuple):
    """State of :func:`average_params`: step count, decay used last (EMA only), the average."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    average: Any


def average_params(
    decay: ScalarOrSchedule | None = None,
    *,
    start_step: int = 0,
    average_dtype: Any = None,
) -> GradientTransformation:
    """Keeps an average of the params in state, for evaluation; the updates pass unchanged.

    Place it *last* in the chain: it sees the final update ``u`` and averages
    the params the step produces, ``p_t = w + u`` (as :func:`apply_updates`
    computes them). With ``t`` the 0-based step count and ``s = start_step``::

        a_0 = w_0                                  (at init)
        a <- p_t                                   (t < s: follows the params)
        a <- a + (1 - decay_t) * (p_t - a)         (EMA, decay given)
        a <- a + (p_t - a) / (t - s + 1)           (Polyak, decay=None: mean of p_s .. p_t)

    ``decay`` is a number in [0, 1) or a schedule (e.g. TF's
    ``min(decay, (1 + t) / (10 + t))`` warm-up). ``average_dtype`` stores the
    average in another dtype (float32 for bf16 params, say). Read the average
    with :func:`averaged_params`. Averaging starts from the params, so no bias
    correction is needed.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.chain(aj.sgd(1.0), aj.average_params())
    >>> params = {"w": jnp.zeros(1)}
    >>> state = tx.init(params)
    >>> for g in (-2.0, -2.0):     # params go 0 -> 2 -> 4
    ...     u, state = tx.update({"w": jnp.array([g])}, state, params)
    ...     params = aj.apply_updates(params, u)
    >>> aj.averaged_params(state)["w"].tolist()      # mean of 2 and 4
    [3.0]

    References: Polyak & Juditsky, SIAM J. Control Optim. 30(4), 1992;
    Izmailov et al., "Averaging Weights Leads to Wider Optima" (SWA), 2018.
    """
    if decay is not None:
        v.check_decay("decay", decay)
    v.check_number("start_step", start_step, lo=0, integer=True)
    v.check_dtype("average_dtype", average_dtype)
    specs = {} if decay is None else {"decay": decay}

    def init_fn(params):
        def copy(w):
            # A new buffer, never the param array itself: a donated step must not see
            # one buffer twice (as params and as state).
            w = jnp.asarray(w)
            return jnp.array(w, dtype=average_dtype if average_dtype is not None else w.dtype,
                             copy=True)

        average = jax.tree.map(leafwise(copy), params)
        return AverageParamsState(jnp.zeros([], jnp.int32), init_hyperparams(**specs), average)

    def update_fn(updates, state, params=None):
        require_params(params, "average_params")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        started = state.count >= start_step
        if decay is None:
            weight = 1 / jnp.maximum(state.count - start_step + 1, 1).astype(float_dtype())
        else:
            weight = 1 - hp["decay"]

        def average(p, a):
            dt = compute_dtype(p, a)
            a_dt = a.astype(dt)
            moved = a_dt + weight.astype(dt) * (p.astype(dt) - a_dt)
            return jnp.where(started, moved, p.astype(dt)).astype(a.dtype)

        stepped = apply_updates(params, updates)
        new_average = jax.tree.map(leafwise(average, keep=1), stepped, state.average)
        return updates, AverageParamsState(increment(state.count), hp, new_average)

    return GradientTransformation(init_fn, update_fn)


def averaged_params(opt_state: Any) -> Any:
    """The average kept by the :func:`average_params` inside ``opt_state``.

    Searches the whole state (a chain, a partition, a wrapper such as
    :func:`accumulate_gradients`), so ``averaged_params(state)`` works wherever
    ``average_params`` sits. Raises ``ValueError`` if there is none or several.
    """
    is_node = lambda x: isinstance(x, AverageParamsState)
    found = [n for n in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(n)]
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: expected one average_params state in opt_state, found {len(found)}."
        )
    return found[0].average
