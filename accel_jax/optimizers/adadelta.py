"""Adadelta: per-coordinate steps with the units of the params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.adadelta import scale_by_adadelta
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: ScalarOrSchedule | None = None,
    eps: float | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    *,
    decoupled_weight_decay: bool | None = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Adadelta, with optional weight decay ``lambda``::

        E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        d_t = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * d_t^2
        w <- w - eta_t * d_t

    The weight decay is coupled L2 (``g_t <- g_t + lambda * w`` before the
    averages; optax, torch.optim) or, with ``decoupled_weight_decay=True``,
    ``w <- w - eta_t * lambda * w`` outside them (Keras' ``weight_decay``), on the
    leaves ``weight_decay_mask`` selects. Zeiler's method has no learning rate:
    ``learning_rate=None`` is ``eta = 1``, torch.optim's default (Keras': 1e-3).
    (optax's ``adadelta(None)`` skips the learning-rate scaling, sign included, so
    its updates ascend; accel_jax's descend.)
    Works on flat params (:func:`accel_jax.flatten_params`): per element.
    Defaults per ``convention``:

    ============================  =====  =====  =====
    argument                      optax  torch  keras
    ============================  =====  =====  =====
    ``rho``                       0.9    0.9    0.95
    ``eps``                       1e-6   1e-6   1e-7
    ``decoupled_weight_decay``    False  False  True
    ============================  =====  =====  =====

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adadelta(1.0)
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 5)  # -sqrt(eps) / sqrt((1 - rho) * g^2 + eps) * g
    -0.00316

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701.
    """
    s = settings(
        "adadelta", convention, rho=rho, eps=eps, decoupled_weight_decay=decoupled_weight_decay
    )
    learning_rate = 1.0 if learning_rate is None else learning_rate
    v.check_rate("learning_rate", learning_rate)
    v.check_flags(decoupled_weight_decay=s["decoupled_weight_decay"])
    scaling = scale_by_adadelta(s["rho"], s["eps"], nu_dtype=nu_dtype)
    decay = add_decayed_weights(weight_decay, weight_decay_mask)
    steps = [scaling, decay] if s["decoupled_weight_decay"] else [decay, scaling]
    return chain(*steps, scale_by_learning_rate(learning_rate))
