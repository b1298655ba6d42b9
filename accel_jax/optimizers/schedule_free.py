"""Schedule-free AdamW and SGD (Defazio et al., 2024): no learning-rate decay to tune."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule, identity
from accel_jax.combine import chain
from accel_jax.hyperparams import float_dtype
from accel_jax.optimizers._conventions import settings
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.schedule_free import scale_by_rms_debiased, schedule_free

_TABLE = """
    ==============================  =======  ============  =======
    argument                        optax    schedulefree  keras
    ==============================  =======  ============  =======
    ``weight_lr_power``             2.0      2.0           0.0
    ``warmup_counts_current_step``  False    True          True
    ``weight_lr_at_next_step``      True     False         False
    ==============================  =======  ============  =======

    ``convention="torch"`` is ``"schedulefree"`` (torch.optim has no schedule-free
    optimizer; facebookresearch's ``schedulefree`` package is PyTorch's reference).
    Warmup multiplies the rate by ``min((t + 1) / warmup_steps, 1)`` at 0-based step
    ``t`` (``warmup_counts_current_step=True``: schedulefree, Keras) or by
    ``min(t / warmup_steps, 1)`` (optax's ``warmup_constant_schedule``, so its first
    step does not move ``z``). ``weight_lr_at_next_step``: see
    :func:`accel_jax.schedule_free`. ``docs/conformance.md`` lists the other
    differences.
"""


def _warmup(learning_rate, warmup_steps, counts_current_step):
    if warmup_steps is None:
        return learning_rate
    v.check_number("warmup_steps", warmup_steps, lo=0.0, integer=True)
    shift = 1 if counts_current_step else 0

    def schedule(count):
        fd = float_dtype()
        base = learning_rate(count) if callable(learning_rate) else learning_rate
        steps = jnp.asarray(warmup_steps, fd)
        frac = (count + shift).astype(fd) / jnp.where(steps > 0, steps, 1)
        return jnp.asarray(base, fd) * jnp.where(steps > 0, jnp.minimum(frac, 1), 1)

    return schedule


def _settings(name, convention, weight_lr_power, warmup_counts_current_step,
              weight_lr_at_next_step):
    return settings(
        name,
        "schedulefree" if convention == "torch" else convention,
        weight_lr_power=weight_lr_power,
        warmup_counts_current_step=warmup_counts_current_step,
        weight_lr_at_next_step=weight_lr_at_next_step,
    )


def _wrap(base, learning_rate, warmup_steps, b1, state_dtype, r, s):
    v.check_flags(
        warmup_counts_current_step=s["warmup_counts_current_step"],
        weight_lr_at_next_step=s["weight_lr_at_next_step"],
    )
    lr = _warmup(learning_rate, warmup_steps, s["warmup_counts_current_step"])
    return schedule_free(
        base, lr, b1, s["weight_lr_power"], state_dtype, r=r,
        base_includes_learning_rate=False, weight_lr_at_next_step=s["weight_lr_at_next_step"],
    )


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: float | None = None,
    state_dtype: Any = None,
    *,
    r: float = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    nu_dtype: Any = None,
    warmup_counts_current_step: bool | None = None,
    weight_lr_at_next_step: bool | None = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Schedule-free AdamW (``optax.contrib.schedule_free_adamw``)::

        v_t = b2 v_{t-1} + (1 - b2) g_t^2,   d_t = g_t / (sqrt(v_t / (1 - b2^t)) + eps) + lambda y_t
        z_{t+1} = z_t - eta_t d_t,           x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}
        c_t = w_t / sum_{i<=t} w_i,          w_t = t^r (max_{i<=t} eta_i)^weight_lr_power

    ``g_t`` is the gradient at the params ``y_t``; ``eta_t`` includes the linear
    warmup over ``warmup_steps`` (None or 0: none); the weight decay ``lambda``
    is taken at ``y`` and scaled by ``eta_t`` (optax, schedulefree; ``mask``
    selects the leaves that decay). Evaluate at
    :func:`accel_jax.schedule_free_eval_params` ``(state, params)``; checkpoint
    the params and the state (it holds ``z``). ``state_dtype``: the dtype of
    ``z``; ``nu_dtype``: of ``v``. Elementwise, so flat params work. A constant
    learning rate is the intended use; a schedule (or ``decay``) is accepted.
    Defaults per ``convention`` (``learning_rate`` 0.0025, ``eps`` 1e-8 in all):
    {table}
    Keras applies ``weight_decay`` to ``y`` alone, outside the ``z`` step: not
    reproduced, so ``convention="keras"`` requires ``weight_decay=0``.

    >>> import jax, jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.schedule_free_adamw(0.1)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = aj.apply_updates(params, updates)
    >>> round(float(params["w"][0]), 6)
    0.9
    >>> round(float(aj.schedule_free_eval_params(state, params)["w"][0]), 6)
    0.9

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    s = _settings("schedule_free_adamw", convention, weight_lr_power,
                  warmup_counts_current_step, weight_lr_at_next_step)
    v.check_rate("learning_rate", learning_rate)
    v.check_number("weight_decay", weight_decay, lo=0.0, allow_schedule=True)
    traced = isinstance(weight_decay, jax.core.Tracer)  # inject_hyperparams under jit
    if convention == "keras" and not traced and (callable(weight_decay) or weight_decay != 0):
        raise ValueError(
            f"weight_decay must be 0 with convention='keras' (Keras decays y outside the "
            f"schedule-free step, which is not reproduced), got {weight_decay!r}."
        )
    base = chain(
        scale_by_rms_debiased(b2, eps, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
    )
    return _wrap(base, learning_rate, warmup_steps, b1, state_dtype, r, s)


schedule_free_adamw.__doc__ = schedule_free_adamw.__doc__.replace("{table}", _TABLE)


def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: ScalarOrSchedule | None = None,
    weight_lr_power: float | None = None,
    state_dtype: Any = None,
    *,
    r: float = 0.0,
    mask: Any | Callable[[Any], Any] | None = None,
    warmup_counts_current_step: bool | None = None,
    weight_lr_at_next_step: bool | None = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Schedule-free SGD (``optax.contrib.schedule_free_sgd``, schedulefree's ``SGDScheduleFree``)::

        z_{t+1} = z_t - eta_t (g_t + lambda y_t),   x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}     (c_t as in :func:`schedule_free_adamw`)

    ``b1`` is schedulefree's ``momentum``. Other arguments, the conventions
    (``optax``, ``schedulefree``/``torch``; Keras has no schedule-free SGD) and
    the evaluation point as :func:`schedule_free_adamw`; ``learning_rate``
    defaults to 1.0 in both.
    {table}
    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.schedule_free_sgd(0.5)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> aj.apply_updates(params, updates)["w"].tolist()
    [0.5, 0.5]

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """
    s = _settings("schedule_free_sgd", convention, weight_lr_power,
                  warmup_counts_current_step, weight_lr_at_next_step)
    v.check_rate("learning_rate", learning_rate)
    base = identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)
    return _wrap(base, learning_rate, warmup_steps, b1, state_dtype, r, s)


schedule_free_sgd.__doc__ = schedule_free_sgd.__doc__.replace("{table}", _TABLE)
