"""RAdam: Adam with the variance of its adaptive step rectified."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.rectified import scale_by_radam
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate


def radam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    eps_before_bias_correction: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """RAdam (rectified Adam), optionally with weight decay::

        rho_inf = 2 / (1 - b2) - 1,   rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        w <- w - eta_t * r_t * m_hat / (sqrt(v_hat + eps_root) + eps)   if rho_t >= threshold
        w <- w - eta_t * m_hat                                          otherwise

    with Adam's bias-corrected moments ``m_hat``, ``v_hat``
    (:func:`accel_jax.scale_by_radam`; ``nesterov=True`` is optax's Nesterov variant).
    ``weight_decay`` ``lambda`` (default: none) is coupled L2, ``g <- g + lambda * w``
    before the moments, or with ``decoupled_weight_decay=True`` AdamW's
    ``w <- w - eta_t * lambda * w``, on the leaves ``mask`` selects: torch.optim.RAdam's
    two forms (optax's ``radam`` has no weight decay). Keras has no RAdam.
    Defaults per ``convention``:

    ================================  =====  =====
    argument                          optax  torch
    ================================  =====  =====
    ``eps_before_bias_correction``    False  True
    ``decoupled_weight_decay``        False  False
    ================================  =====  =====

    ``eps_before_bias_correction=True``: the denominator is
    ``sqrt(v_hat) + eps / sqrt(1 - b2^t)`` (torch.optim). Works on flat params
    (:func:`accel_jax.flatten_params`): every formula is per element.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.radam(0.1)
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 6)  # step 1 is not rectified: -eta * m_hat = -eta * g
    -0.2

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and
    Beyond", ICLR 2020.
    """
    s = settings(
        "radam",
        convention,
        eps_before_bias_correction=eps_before_bias_correction,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    v.check_rate("learning_rate", learning_rate)
    v.check_flags(decoupled_weight_decay=s["decoupled_weight_decay"])
    scaling = scale_by_radam(
        b1, b2, eps, eps_root, threshold, nesterov=nesterov,
        eps_before_bias_correction=s["eps_before_bias_correction"],
        mu_dtype=mu_dtype, nu_dtype=nu_dtype,
    )
    lr = scale_by_learning_rate(learning_rate)
    if weight_decay is None:
        return chain(scaling, lr)
    decay = add_decayed_weights(weight_decay, mask)
    if s["decoupled_weight_decay"]:
        return chain(scaling, decay, lr)
    return chain(decay, scaling, lr)
