"""Regularization and sparsity: weight decay, L1 proximal step, max-norm, magnitude pruning.

:func:`add_decayed_weights` serves both L2 forms: placed *before* the
optimizer's scaling in a chain it is coupled L2 regularization (the decay enters
the moments, torch.optim's ``weight_decay``); placed *after* it, just before the
learning rate, it is decoupled weight decay (AdamW).

The others act *after the step* and go **last** in a chain, after the learning
rate: they receive the optimizer's update ``u`` and the params ``w``, compute the
constrained params ``w' = C(w + u)`` and return ``w' - w``, so that
:func:`apply_updates` yields ``w'``. Where ``w'`` must be exactly zero they
return ``-w`` (``w + (-w) == 0`` exactly), and where the constraint is inactive
they return ``u`` itself, so those params are bit-identical to the
unconstrained step. ``w + u`` is formed by :func:`apply_updates` itself.

Every one takes a ``mask`` (a pytree of bools shaped like the params or a
prefix of it, or a function of the params returning one) selecting the leaves it
acts on, e.g. kernels but not biases; the others pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    apply_updates,
    check_structure,
    compute_dtype,
    is_trainable,
    leafwise,
    needs_params_tree,
    require_params,
    stateless,
)
from accel_jax.combine import masked
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_state
from accel_jax.transforms.clipping import _check_axis, unit_norms


def _with_mask(tx: GradientTransformation, mask: Any) -> GradientTransformation:
    """``tx`` restricted to the leaves selected by ``mask`` (all leaves when ``None``)."""
    return tx if mask is None else masked(tx, mask)


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

    init_fn = init_state(AddDecayedWeightsState, specs)

    def update_fn(updates, state, params=None):
        require_params(params, "add_decayed_weights")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        factor = hp["weight_decay"]
        if learning_rate is not None:
            factor = -hp["learning_rate"] * factor

        def decay(g, w):
            dt = compute_dtype(g, w)
            return (g.astype(dt) + factor.astype(dt) * w.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(decay), updates, params)
        return updates, AddDecayedWeightsState(increment(state.count), hp)

    return _with_mask(GradientTransformation(init_fn, update_fn), mask)


# --------------------------------------------------------------------------- L1 proximal step


class L1ProximalState(NamedTuple):
    """State of :func:`l1_proximal`: step count and the strength and learning rate used last."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def l1_proximal(
    l1: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    """The proximal step of L1 regularization (soft-thresholding), after the optimizer's step::

        z  = w + u                                    (the unregularized step)
        w' = sign(z) * max(|z| - eta_t * l1_t, 0)     (the prox of eta_t * l1_t * ||w||_1)
        u <- w' - w       (u <- -w where |z| <= eta_t * l1_t, so w' is exactly 0)

    Minimizing ``loss + l1 * ||w||_1`` this way (proximal gradient descent,
    ISTA) gives exact zeros, which a subgradient ``l1 * sign(w)`` added to the
    gradient never does. ``learning_rate`` must be the rate of the optimizer it
    follows (a number or the same schedule; it is evaluated at this
    transformation's own step count, which advances with the optimizer's).
    Place it last in the chain::

        chain(scale_by_adam(), scale_by_learning_rate(lr), l1_proximal(1e-4, lr))

    ``mask`` selects the leaves that are regularized. Both hyperparameters are
    kept in state (see :func:`accel_jax.get_hyperparams`).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.chain(aj.sgd(0.5), aj.l1_proximal(0.5, 0.5))    # threshold 0.25
    >>> params = {"w": jnp.array([0.75, 0.125, -0.5])}
    >>> u, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> aj.apply_updates(params, u)["w"].tolist()
    [0.5, 0.0, -0.25]

    Reference: Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm", 2009.
    """
    v.check_number("l1", l1, lo=0.0, allow_schedule=True)
    v.check_rate("learning_rate", learning_rate)
    specs = {"l1": l1, "learning_rate": learning_rate}

    init_fn = init_state(L1ProximalState, specs)

    def update_fn(updates, state, params=None):
        require_params(params, "l1_proximal")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        threshold = hp["learning_rate"] * hp["l1"]

        def prox(u, w, z):
            z = z.astype(compute_dtype(z))
            magnitude = jnp.abs(z)
            tau = threshold.astype(magnitude.dtype)
            shrunk = jnp.sign(z) * (magnitude - tau).astype(z.dtype)
            return jnp.where(
                magnitude > tau, (shrunk - w.astype(z.dtype)).astype(u.dtype), (-w).astype(u.dtype)
            )

        updates = jax.tree.map(leafwise(prox), updates, params, apply_updates(params, updates))
        return updates, L1ProximalState(increment(state.count), hp)

    return _with_mask(GradientTransformation(init_fn, update_fn), mask)


# --------------------------------------------------------------------------- max-norm


def max_norm(
    max_value: float,
    axis: int | tuple[int, ...] | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    """Max-norm constraint, after the step: each unit's incoming weights get norm ``<= r``::

        z = w + u
        w'_i = z_i * r / ||z_i||     where ||z_i|| > r      (unit i rescaled onto the ball)
        w'_i = z_i                   elsewhere              (u_i returned unchanged)
        u <- w' - w

    A *unit* is the slice reduced over ``axis``: ``axis=0`` for a Dense kernel
    of shape ``(in, out)`` constrains each output neuron's incoming weights
    (Keras' ``MaxNorm(axis=0)``), ``axis=(0, 1, 2)`` an ``HWIO`` convolution's
    filters. ``axis=None`` picks the axes by rank as :func:`unit_norms` does
    (the whole array for vectors and scalars). Use ``mask`` to constrain kernels
    only. After ``apply_updates`` every unit's norm is ``<= r`` up to one
    rounding of the final addition (a few ulp); units inside the ball are
    bit-identical to the unconstrained step. Stateless (``EmptyState``).

    Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural
    Networks from Overfitting", JMLR 15 (2014).
    """
    v.check_number("max_value", max_value, lo=0.0, lo_open=True)
    _check_axis(axis)

    def update_fn(updates, params):
        require_params(params, "max_norm")

        def constrain(u, w, z):
            norms = unit_norms(z, axis)
            over = norms > max_value
            factor = max_value / jnp.where(over, norms, 1)
            dt = compute_dtype(z, factor)
            out = (z.astype(dt) * factor.astype(dt) - w.astype(dt)).astype(u.dtype)
            return jnp.where(over, out, u)

        stepped = apply_updates(params, updates)
        return jax.tree.map(leafwise(constrain), updates, params, stepped)

    tx = needs_params_tree(stateless(update_fn), "max_norm: each unit's norm of a leaf")
    return _with_mask(tx, mask)


# --------------------------------------------------------------------------- magnitude pruning


class PruneByMagnitudeState(NamedTuple):
    """State of :func:`prune_by_magnitude`: step count and the keep-masks (True = kept)."""

    count: jax.Array  # int32
    masks: Any  # bool, shaped like the params


PRUNING_SCOPES = ("per_leaf", "global")


def polynomial_sparsity(
    step: jax.Array,
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    power: float = 3.0,
) -> jax.Array:
    """TF-MOT's ``PolynomialDecay`` sparsity at ``step``.

    With ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`` (``p = 1``
    from ``begin_step`` on when ``end_step == begin_step``)::

        s = final_sparsity + (initial_sparsity - final_sparsity) * (1 - p)^power
    """
    t = jnp.asarray(step).astype(float_dtype())
    if end_step == begin_step:
        p = (t >= begin_step).astype(t.dtype)
    else:
        p = jnp.clip((t - begin_step) / (end_step - begin_step), 0, 1)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** power


def _keep_masks(magnitudes: list, old_masks: list, sparsity: jax.Array) -> list:
    """Keep-masks pruning exactly ``n - max(round(n * (1 - s)), 1)`` of ``n`` entries.

    Entries are ranked by magnitude with a stable sort; already pruned entries
    rank below every kept one (so they stay pruned while the sparsity grows), and
    ties are broken by position (lower flat index, earlier leaf, pruned first).
    """
    keys = [jnp.where(m, a, -1).ravel() for a, m in zip(magnitudes, old_masks, strict=True)]
    flat = jnp.concatenate(keys) if len(keys) > 1 else keys[0]
    n = flat.size
    keep = jnp.maximum(jnp.round(n * (1 - sparsity)), 1)
    n_prune = n - keep.astype(jnp.int32)
    order = jnp.argsort(flat, stable=True)
    ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    kept = ranks >= n_prune
    offsets = np.cumsum([k.size for k in keys])[:-1].tolist()
    splits = jnp.split(kept, offsets)
    return [s.reshape(a.shape) for s, a in zip(splits, magnitudes, strict=True)]


def prune_by_magnitude(
    final_sparsity: float,
    *,
    initial_sparsity: float = 0.0,
    begin_step: int = 0,
    end_step: int = 0,
    frequency: int = 100,
    power: float = 3.0,
    scope: str = "per_leaf",
    mask: Any | Callable[[Any], Any] | None = None,
) -> GradientTransformation:
    """Magnitude pruning with TF-MOT's polynomial sparsity schedule, after the step.

    At every update ``t`` (0-based) with ``begin_step <= t <= end_step`` and
    ``(t - begin_step) % frequency == 0`` the keep-mask is recomputed from the
    stepped params ``z = w + u``: with the target (see :func:`polynomial_sparsity`)::

        s_t = final + (initial - final) * (1 - p)^power,  p = (t - begin) / (end - begin)

    the ``n - max(round(n * (1 - s_t)), 1)`` entries of smallest ``|z|`` are
    pruned, ``n`` the size of each leaf (``scope="per_leaf"``) or of all the
    selected leaves together (``scope="global"``, one threshold for the whole
    model). At every step, pruning or not, the mask is applied::

        u <- u     where kept        (the optimizer's step, unchanged)
        u <- -w    where pruned      (so the param is exactly 0)

    so pruned weights are exactly zero after ``apply_updates`` and stay zero
    (they rank lowest at later pruning steps). Between pruning steps and after
    ``end_step`` the mask is kept; before ``begin_step`` nothing is pruned.
    ``end_step == begin_step`` prunes once, to ``final_sparsity``. The sparsity
    reached is exact: ties in magnitude are broken by position (lower flat index,
    then earlier leaf in tree order, pruned first), not kept together as TF-MOT's
    ``>= threshold`` does. ``mask`` selects the leaves that are pruned (kernels,
    say; the global ranking then covers only those). The global ranking is a
    plain sort of all selected magnitudes, so it is correct with params sharded
    under ``jax.jit``; the sort runs only on pruning steps (a ``lax.cond``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.prune_by_magnitude(0.5)          # half of each leaf, at the first step
    >>> params = {"w": jnp.array([0.5, -0.125, 0.25, -0.75])}
    >>> u, state = tx.update({"w": jnp.zeros(4)}, tx.init(params), params)
    >>> aj.apply_updates(params, u)["w"].tolist(), state.masks["w"].tolist()
    ([0.5, 0.0, 0.0, -0.75], [True, False, False, True])

    Reference: Zhu & Gupta, "To prune, or not to prune", 2017 (the schedule of
    TF-MOT's ``prune_low_magnitude`` with ``PolynomialDecay``).
    """
    v.check_number("final_sparsity", final_sparsity, lo=0.0, hi=1.0, hi_open=True)
    v.check_number("initial_sparsity", initial_sparsity, lo=0.0, hi=float(final_sparsity))
    v.check_number("begin_step", begin_step, lo=0, integer=True)
    v.check_number("end_step", end_step, lo=float(begin_step), integer=True)
    v.check_number("frequency", frequency, lo=1, integer=True)
    v.check_number("power", power, lo=0.0)
    v.check_choice("scope", scope, PRUNING_SCOPES)
    begin_step, end_step, frequency = int(begin_step), int(end_step), int(frequency)

    def init_fn(params):
        return PruneByMagnitudeState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(lambda w: jnp.ones_like(w, dtype=jnp.bool_), params),
        )

    def new_masks(stepped, masks, sparsity):
        leaves = [z for z in jax.tree.leaves(stepped) if is_trainable(z)]
        old = [
            m
            for z, m in zip(jax.tree.leaves(stepped), jax.tree.leaves(masks), strict=True)
            if is_trainable(z)
        ]
        if not leaves:
            return masks
        magnitudes = [jnp.abs(z) for z in leaves]
        dt = compute_dtype(*magnitudes)
        magnitudes = [a.astype(dt) for a in magnitudes]
        if scope == "global":
            fresh = iter(_keep_masks(magnitudes, old, sparsity))
        else:
            fresh = iter(
                k
                for a, m in zip(magnitudes, old, strict=True)
                for k in _keep_masks([a], [m], sparsity)
            )
        return jax.tree.map(lambda z, m: next(fresh) if is_trainable(z) else m, stepped, masks)

    def update_fn(updates, state, params=None):
        require_params(params, "prune_by_magnitude")
        check_structure(updates, state.masks, "the optimizer state (pruning masks)")
        t = state.count
        stepped = apply_updates(params, updates)
        prune_now = (t >= begin_step) & (t <= end_step) & ((t - begin_step) % frequency == 0)
        sparsity = polynomial_sparsity(
            t, initial_sparsity, final_sparsity, begin_step, end_step, power
        )
        masks = jax.lax.cond(
            prune_now,
            lambda m: new_masks(stepped, m, sparsity),
            lambda m: m,
            state.masks,
        )

        def apply(u, w, keep):
            return jnp.where(keep, u, (-w).astype(u.dtype))

        updates = jax.tree.map(leafwise(apply), updates, params, masks)
        return updates, PruneByMagnitudeState(increment(state.count), masks)

    tx = GradientTransformation(init_fn, update_fn)
    if scope == "per_leaf":
        tx = needs_params_tree(tx, "prune_by_magnitude(scope='per_leaf'): a threshold per leaf")
    return _with_mask(tx, mask)
