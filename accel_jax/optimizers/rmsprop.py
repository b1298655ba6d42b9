"""RMSProp, plain or centered, with optional momentum."""

from __future__ import annotations

from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import momentum_and_lr, settings, uses_momentum
from accel_jax.optimizers._kernels import with_rms_kernel
from accel_jax.transforms.adaptive import (
    scale_by_rms,
    scale_by_stddev,
)


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float | None = None,
    eps: float | None = None,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool | None = None,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    lr_in_momentum: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """RMSProp, plain or centered, with optional (Nesterov) momentum::

        v_t = decay * v_{t-1} + (1 - decay) * g_t^2
        d_t = g_t / sqrt(v_t + eps)          (centered: g_t / sqrt(v_t - m_t^2 + eps),
                                              m_t the average gradient)
        w <- w - eta_t * d_t                 (no momentum)
        b_t = beta * b_{t-1} + eta_t * d_t;  w <- w - b_t     (momentum, lr_in_momentum=True)
        b_t = beta * b_{t-1} + d_t;  w <- w - eta_t * b_t     (momentum, lr_in_momentum=False)

    ``eps_in_sqrt=False`` uses ``sqrt(v_t) + eps``; ``bias_correction=True`` (optax's,
    plain RMSProp only) divides ``v_t`` by ``1 - decay^t``. On CPU,
    :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` run plain RMSProp (not
    centered, no momentum) as one native pass over memory (``docs/performance.md``).
    Defaults per ``convention``:

    ===================  =====  =====  =====
    argument             optax  torch  keras
    ===================  =====  =====  =====
    ``decay``            0.9    0.99   0.9
    ``eps``              1e-8   1e-8   1e-7
    ``eps_in_sqrt``      True   False  True
    ``lr_in_momentum``   True   False  True
    ===================  =====  =====  =====

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.rmsprop(0.01, convention="torch")
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 4)  # -lr * g / sqrt((1 - 0.99) * g^2) = -0.1
    -0.1

    Reference: Hinton, Coursera "Neural Networks for Machine Learning", lecture 6e.
    """
    v.check_flags(centered=centered, nesterov=nesterov, bias_correction=bias_correction)
    if centered and bias_correction:
        raise ValueError(
            "bias_correction=True is supported for plain RMSProp only, got centered=True."
        )
    s = settings(
        "rmsprop",
        convention,
        decay=decay,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        lr_in_momentum=lr_in_momentum,
    )
    v.check_rate("learning_rate", learning_rate)
    use_momentum = uses_momentum(momentum, nesterov, convention)
    kwargs = dict(eps_in_sqrt=s["eps_in_sqrt"], initial_scale=initial_scale, nu_dtype=nu_dtype)
    if centered:
        scaling = scale_by_stddev(s["decay"], s["eps"], mu_dtype=mu_dtype, **kwargs)
    else:
        scaling = scale_by_rms(s["decay"], s["eps"], bias_correction=bias_correction, **kwargs)
    tx = chain(
        scaling,
        *momentum_and_lr(
            momentum, nesterov, mu_dtype, learning_rate, s["lr_in_momentum"], use_momentum
        ),
    )
    if not centered and not use_momentum and not bias_correction:
        tx = with_rms_kernel(tx, s["decay"], s["eps"], s["eps_in_sqrt"])
    return tx

