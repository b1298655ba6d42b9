"""Layer-wise adaptive large-batch optimizers: LAMB (Adam + trust ratio), LARS (SGD + it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    compute_dtype,
    leafwise,
    needs_params_tree,
    require_params,
)
from accel_jax.combine import chain, masked
from accel_jax.hyperparams import current_hyperparams, increment, init_state
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.adam import scale_by_adam
from accel_jax.transforms.momentum import trace
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate
from accel_jax.transforms.trust_ratio import _is_everything, leaf_norm, scale_by_trust_ratio

Mask = Any | Callable[[Any], Any] | None
_LAMB_NEEDS_TREE = "lamb: one trust ratio ||w|| / ||u|| per leaf (scale_by_trust_ratio)"


class _DecayedNormState(NamedTuple):
    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def _trust_in_decayed_weights(learning_rate, weight_decay) -> GradientTransformation:
    """``u <- |1 - eta_t * lambda_t| * u`` where ``w != 0``: the trust ratio of Keras' Lamb,
    which takes ``||w||`` after its decoupled decay ``w <- w * (1 - eta_t * lambda_t)``."""
    specs = {"learning_rate": learning_rate, "weight_decay": weight_decay}

    init_fn = init_state(_DecayedNormState, specs)

    def update_fn(updates, state, params=None):
        require_params(params, "lamb")
        hp = current_hyperparams(specs, state.hyperparams, state.count)

        def shrink(u, w):
            dt = compute_dtype(u, w)
            factor = jnp.abs(1 - hp["learning_rate"].astype(dt) * hp["weight_decay"].astype(dt))
            factor = jnp.where(leaf_norm(w.astype(dt)) > 0, factor, jnp.ones([], dt))
            return (u.astype(dt) * factor).astype(u.dtype)

        updates = jax.tree.map(leafwise(shrink), updates, params)
        return updates, _DecayedNormState(increment(state.count), hp)

    return GradientTransformation(init_fn, update_fn)


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Mask = None,
    *,
    weight_decay_in_trust_ratio: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """LAMB: Adam's direction, decoupled weight decay, and a per-layer trust ratio::

        d_t = m_hat / (sqrt(v_hat + eps_root) + eps)             (Adam, as aj.adam)
        w <- w - eta_t * r(w, d_t + lambda * w) * (d_t + lambda * w)
                                            (weight_decay_in_trust_ratio=True: optax)
        w' = (1 - eta_t * lambda) * w,   w <- w' - eta_t * r(w', d_t) * d_t
                                            (False: Keras, whose base class decays first)

    with ``r(w, u) = ||w|| / ||u||`` per leaf, 1 where a norm is 0 (see
    :func:`accel_jax.scale_by_trust_ratio`). ``mask`` selects the leaves that
    decay (the trust ratio applies to every leaf). ``mu_dtype``/``nu_dtype`` as in
    :func:`accel_jax.adam`. Flat params (:func:`accel_jax.flatten_params`) are not
    supported: the trust ratio needs each layer as its own leaf.
    Defaults per ``convention`` (torch.optim has no LAMB):

    ===============================  ======  =====
    argument                         optax   keras
    ===============================  ======  =====
    ``eps``                          1e-6    1e-7
    ``weight_decay``                 0.0     0.0 (None)
    ``weight_decay_in_trust_ratio``  True    False
    ===============================  ======  =====

    >>> import jax, jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.lamb(1e-2)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, _ = tx.update({"w": jnp.array([1.0, -2.0])}, tx.init(params), params)
    >>> [round(float(x), 4) for x in updates["w"]]     # Adam's first step, norm 5 * eta
    [-0.0354, 0.0354]

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training
    BERT in 76 minutes", ICLR 2020.
    """
    s = settings(
        "lamb", convention, eps=eps, weight_decay=weight_decay,
        weight_decay_in_trust_ratio=weight_decay_in_trust_ratio,
    )
    v.check_flags(weight_decay_in_trust_ratio=s["weight_decay_in_trust_ratio"])
    v.check_rate("learning_rate", learning_rate)
    adam = scale_by_adam(b1, b2, s["eps"], eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    wd = s["weight_decay"]
    if s["weight_decay_in_trust_ratio"]:
        tx = chain(
            adam,
            add_decayed_weights(wd, mask),
            scale_by_trust_ratio(),
            scale_by_learning_rate(learning_rate),
        )
        return needs_params_tree(tx, _LAMB_NEEDS_TREE)
    shrink = _trust_in_decayed_weights(learning_rate, wd)
    tx = chain(
        adam,
        scale_by_trust_ratio(),
        shrink if _is_everything(mask) else masked(shrink, mask),
        scale_by_learning_rate(learning_rate),
        add_decayed_weights(wd, mask, learning_rate=learning_rate),
    )
    return needs_params_tree(tx, _LAMB_NEEDS_TREE)


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Mask = True,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
    *,
    mu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """LARS: SGD with momentum on trust-ratio-scaled gradients (optax's form)::

        u_t = g_t + lambda * w                                  (weight_decay_mask leaves)
        u_t <- c * ||w|| / (||u_t|| + eps) * u_t                (trust_ratio_mask leaves)
        v_t = mu * v_{t-1} - eta_t * u_t,     w <- w + v_t
                                  (Nesterov: w <- w + mu * v_t - eta_t * u_t)

    with ``c`` the ``trust_coefficient`` and the ratio 1 where a norm is 0 (see
    :func:`accel_jax.scale_by_trust_ratio`). Masks: a pytree of bools, a prefix
    of one, or a function of the params (``True``: every leaf); the usual choice
    excludes biases and normalization scales from both. The velocity accumulates
    the learning-rate-scaled step (as optax's ``trace`` after the rate), so a
    changing rate does not rescale past steps. Only optax ships LARS
    (``convention="optax"``; torch.optim and Keras have none). Flat params are not
    supported: the trust ratio needs each layer as its own leaf.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.lars(1.0, trust_coefficient=0.1)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, _ = tx.update({"w": jnp.array([0.0, 2.0])}, tx.init(params), params)
    >>> updates["w"].tolist()                            # 0.1 * ||w|| = 0.5
    [0.0, -0.5]

    Reference: You, Gitman & Ginsburg, "Large Batch Training of Convolutional
    Networks", 2017.
    """
    settings("lars", convention)
    v.check_flags(nesterov=nesterov)
    masks = {"weight_decay_mask": weight_decay_mask, "trust_ratio_mask": trust_ratio_mask}
    for name, m in masks.items():
        if isinstance(m, (str, bytes)):
            raise ValueError(
                f"{name} must be a bool, a pytree of bools or a function of the params, got {m!r}."
            )
    v.check_rate("learning_rate", learning_rate)
    decay = add_decayed_weights(weight_decay)
    ratio = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    tx = chain(
        decay if _is_everything(weight_decay_mask) else masked(decay, weight_decay_mask),
        ratio if _is_everything(trust_ratio_mask) else masked(ratio, trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=nesterov, mu_dtype=mu_dtype),
    )
    return needs_params_tree(tx, "lars: one trust ratio ||w|| / ||u|| per leaf")
