"""AdaGrad."""

from __future__ import annotations

from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.adaptive import scale_by_adagrad
from accel_jax.transforms.scaling import scale_by_learning_rate


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float | None = None,
    eps: float | None = None,
    *,
    eps_in_sqrt: bool | None = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """AdaGrad: per-coordinate steps shrinking with the sum of squared gradients::

        s_t = s_{t-1} + g_t^2,   w <- w - eta_t * g_t / sqrt(s_t + eps)
                                 (w <- w - eta_t * g_t / (sqrt(s_t) + eps) if not eps_in_sqrt)

    Defaults per ``convention``:

    =============================  =====  ======  =====
    argument                       optax  torch   keras
    =============================  =====  ======  =====
    ``initial_accumulator_value``  0.1    0.0     0.1
    ``eps``                        1e-7   1e-10   1e-7
    ``eps_in_sqrt``                True   False   True
    =============================  =====  ======  =====

    torch's ``lr_decay`` is the schedule ``eta / (1 + t * lr_decay)``
    (:func:`accel_jax.power_decay` style), passed as ``learning_rate``.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adagrad(0.1, convention="torch")
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 6)  # the first step is -lr * sign(g)
    -0.1

    Reference: Duchi, Hazan & Singer, JMLR 12 (2011).
    """
    s = settings(
        "adagrad",
        convention,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
    )
    v.check_rate("learning_rate", learning_rate)
    return chain(
        scale_by_adagrad(
            s["initial_accumulator_value"], s["eps"], eps_in_sqrt=s["eps_in_sqrt"],
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )

