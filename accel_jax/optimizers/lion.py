"""Lion: sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate
from accel_jax.transforms.sign import scale_by_lion


def lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Lion (EvoLved Sign Momentum)::

        u_t = sign(b1 * m_{t-1} + (1 - b1) * g_t),   m_t = b2 * m_{t-1} + (1 - b2) * g_t
        w <- w - eta_t * (u_t + lambda * w)

    Decoupled weight decay ``lambda``, scaled by the learning rate (optax; Keras'
    ``weight_decay``, applied by its base optimizer), on the leaves ``mask``
    selects. One state tree, the momentum ``m`` (dtype ``mu_dtype``). Use a
    learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.
    Works on flat params (:func:`accel_jax.flatten_params`): per element.
    Defaults per ``convention``: ``weight_decay`` 1e-3 (optax), 0 (keras); ``b1``
    0.9 and ``b2`` 0.99 in both. torch.optim has no Lion.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.lion(0.25, weight_decay=0.0)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> u, state = tx.update({"w": jnp.array([3.0, -0.5])}, tx.init(params), params)
    >>> u["w"].tolist()  # -eta * sign(g) at the first step
    [-0.25, 0.25]

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms",
    NeurIPS 2023.
    """
    s = settings("lion", convention, weight_decay=weight_decay)
    v.check_rate("learning_rate", learning_rate)
    return chain(
        scale_by_lion(b1, b2, mu_dtype=mu_dtype),
        add_decayed_weights(s["weight_decay"], mask),
        scale_by_learning_rate(learning_rate),
    )
