"""Rectified Adam (RAdam): Adam whose adaptive step is switched on as its variance becomes finite.

Notation as in :mod:`accel_jax.transforms.adaptive`: ``g`` the incoming update,
``t`` the 1-based step, ``m``/``v`` the first and second moments. The
rectification scalars (``rho_t``, ``r_t``) are computed once per step in the
default float dtype; the per-leaf arithmetic in the leaf's computation dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_structure,
    compute_dtype,
    leafwise,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_state
from accel_jax.transforms.adam import (
    ScaleByAdamState,
    adam_moments,
    check_adam_args,
)
from accel_jax.transforms.adaptive import adam_eps, bias_correction

# x / expm1(x) = sum_n B_n x^n / n!: the coefficients of x^2, x^4, ..., x^16 (B_1 = -1/2 apart).
_BERNOULLI = (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160,
              -691 / 1307674368000, 1 / 74724249600, -3617 / 10670622842880000)


def _one_minus_x_over_expm1(x: jax.Array) -> jax.Array:
    """``1 - x / expm1(x)`` for ``x > 0`` without cancellation (a series below 0.5)."""
    small = jnp.minimum(x, 0.5)
    x2, series = small * small, jnp.zeros_like(small)
    for c in reversed(_BERNOULLI):
        series = (series + c) * x2
    series = small / 2 - series
    large = jnp.maximum(x, 0.5)
    return jnp.where(x < 0.5, series, 1 - large / jnp.expm1(large))


def _log1p_tail(q: jax.Array, terms: int = 40) -> jax.Array:
    """``-log1p(-q) - q = sum_{k>=2} q^k / k`` without cancellation (for ``q`` in [0, 0.5])."""
    series = jnp.zeros_like(q)
    for k in range(terms, 1, -1):
        series = (series + 1 / k) * q
    return series * q


def rectification(b2: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(rho_t, r_t)`` of RAdam at step ``t = count`` (in the default float dtype)::

        rho_inf = 2 / (1 - b2) - 1,   rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))

    ``r_t`` is set to 0 where it is not real (``rho_t`` in (2, 4)). ``rho_t`` is the
    difference of two numbers near ``2 / (1 - b2)`` (2000 for ``b2 = 0.999``) and
    about ``t``: computed as written, float32 loses 4 digits of it (optax's float32
    ``rho_6`` is 5.955, the exact value 5.994). With ``q = 1 - b2``,
    ``y = -log(b2)`` and ``x = t y`` it is computed here as
    ``rho_t = 2 (y - q) / (q y) - 1 + (2 / y) (1 - x / expm1(x))``, the
    cancelling parts by their series, to a few ulps of ``t``. Where ``b2 < 0.5``,
    ``rho_inf < 3`` and no step is rectified.
    """
    dt = float_dtype()
    t = count.astype(dt)
    q = jnp.clip(1 - b2.astype(dt), 1e-30, 0.5)
    tail = _log1p_tail(q)
    y = q + tail  # -log(b2)
    rho_inf = 2 / q - 1
    rho = 2 * tail / (q * y) - 1 + 2 / y * _one_minus_x_over_expm1(t * y)
    rho = jnp.where(b2 < 0.5, jnp.zeros_like(rho), rho)
    ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    return rho, jnp.sqrt(jnp.where(ratio > 0, ratio, jnp.zeros_like(ratio)))


def scale_by_radam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    eps_before_bias_correction: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """RAdam's scaling (Liu et al., 2020): Adam with a variance rectification::

        m_t, v_t, m_hat, v_hat as in Adam,   rho_t, r_t: see :func:`rectification`
        u_t = r_t * m_hat / (sqrt(v_hat + eps_root) + eps)     if rho_t >= threshold
        u_t = m_hat                                            otherwise

    While the variance of the adaptive step is intractable (the first steps:
    ``rho_t < 5`` until step 6 for ``b2 = 0.999``) the step is SGD with
    bias-corrected momentum. ``nesterov=True`` (optax) uses
    ``m_hat = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``.
    ``eps_before_bias_correction=True`` (torch.optim) adds ``eps`` to ``sqrt(v_t)``
    before the bias correction: ``eps / sqrt(1 - b2^t)`` above. torch.optim switches
    on ``rho_t > 5``, optax on ``rho_t >= 5``: the same except at equality.
    State: :class:`ScaleByAdamState`.

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and
    Beyond", ICLR 2020.
    """
    check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    v.check_number("threshold", threshold, lo=4.0)
    v.check_flags(nesterov=nesterov, eps_before_bias_correction=eps_before_bias_correction)
    specs = {"b1": b1, "b2": b2}
    init_fn = init_state(ScaleByAdamState, specs, mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        b1_t, b2_t = hp["b1"], hp["b2"]
        mu, nu, count = adam_moments(updates, state, b1_t, b2_t)
        bc1, bc2 = bias_correction(b1_t, count), bias_correction(b2_t, count)
        # Nesterov: m_hat = c_m * m + c_g * g (c_g = 0 without).
        if nesterov:
            c_m = b1_t / bias_correction(b1_t, increment(count))
            c_g = (1 - b1_t) / bc1
        else:
            c_m, c_g = 1 / bc1, jnp.zeros_like(bc1)
        eps_eff = adam_eps(eps, bc2, eps_before_bias_correction)
        rho, r = rectification(b2_t, count)
        rectify = rho >= jnp.asarray(threshold, rho.dtype)

        def direction(g, m, n):
            dt = compute_dtype(g, m, n)
            m_hat = c_m.astype(dt) * m.astype(dt)
            if nesterov:
                m_hat = m_hat + c_g.astype(dt) * g.astype(dt)
            n_hat = n.astype(dt) / bc2.astype(dt)
            den = jnp.sqrt(n_hat + jnp.asarray(eps_root, dt)) + eps_eff.astype(dt)
            return jnp.where(rectify, r.astype(dt) * m_hat / den, m_hat).astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, mu, nu)
        return updates, ScaleByAdamState(count, hp, mu, nu)

    return GradientTransformation(init_fn, update_fn)
