"""Stochastic gradient descent, with momentum, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule, is_zero_literal
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import momentum_and_lr, settings, uses_momentum
from accel_jax.optimizers._kernels import with_momentum_kernel
from accel_jax.transforms.regularization import add_decayed_weights


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool | None = None,
    lr_in_momentum: bool | None = None,
    mu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, with optional momentum, Nesterov momentum and weight decay.

    With learning rate ``eta_t``, momentum ``beta`` and weight decay ``lambda``::

        g_t <- g_t + lambda * w                        (coupled L2, torch.optim's weight_decay)
        v_t = beta * v_{t-1} + g_t;   w <- w - eta_t * v_t               (heavy ball)
        w <- w - eta_t * (g_t + beta * v_t)                              (nesterov=True)

    ``lr_in_momentum=True`` puts the learning rate inside the velocity (Keras):
    ``v_t = beta * v_{t-1} - eta_t * g_t;  w <- w + v_t``; the two agree for a
    constant rate and differ when it changes. ``decoupled_weight_decay=True``
    subtracts ``eta_t * lambda * w`` outside the momentum (Keras' ``weight_decay``).
    ``momentum=None`` is plain gradient descent (so is a literal ``0`` outside the optax
    convention; optax keeps a zero-momentum trace in the state). ``accumulator_dtype``
    is optax's name for ``mu_dtype``. On CPU,
    :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` run SGD with momentum
    and no weight decay as one native pass over memory (``docs/performance.md``).
    Defaults per ``convention``:

    ============================  =====  =====  =====
    argument                      optax  torch  keras
    ============================  =====  =====  =====
    ``lr_in_momentum``            False  False  True
    ``decoupled_weight_decay``    False  False  True
    ============================  =====  =====  =====

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1, momentum=0.9)
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 6)
    -0.2

    References: Polyak 1964; Sutskever et al., ICML 2013.
    """
    v.check_flags(nesterov=nesterov)
    s = settings(
        "sgd",
        convention,
        lr_in_momentum=lr_in_momentum,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    v.check_rate("learning_rate", learning_rate)
    if weight_decay is not None:
        v.check_number("weight_decay", weight_decay, lo=0.0, allow_schedule=True)
    mu_dtype = mu_dtype if accumulator_dtype is None else accumulator_dtype
    use_momentum = uses_momentum(momentum, nesterov, convention)
    steps: list = []
    coupled = not s["decoupled_weight_decay"]
    use_decay = weight_decay is not None and not is_zero_literal(weight_decay)
    if use_decay and coupled:
        steps.append(add_decayed_weights(weight_decay))
    steps += momentum_and_lr(
        momentum, nesterov, mu_dtype, learning_rate, s["lr_in_momentum"], use_momentum
    )
    if use_decay and not coupled:
        steps.append(add_decayed_weights(weight_decay, learning_rate=learning_rate))
    tx = chain(*steps)
    if use_momentum and not use_decay:
        tx = with_momentum_kernel(tx, nesterov, s["lr_in_momentum"])
    return tx

