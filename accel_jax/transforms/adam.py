"""Adam's family of scalings: Adam, AMSGrad, AdaMax, Nadam.

Notation and dtype rules as in :mod:`accel_jax.transforms.adaptive` (``g`` the incoming
update, ``t`` the 1-based step, ``m``/``v`` the first/second moments): each block returns
the *direction*, a learning-rate scaling follows it in the chain. The keyword-only
switches reproduce other frameworks' conventions (``docs/conformance.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_structure,
    compute_dtype,
    leafwise,
    update_moment,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_state
from accel_jax.transforms.adaptive import adam_direction_leaf, adam_eps, bias_correction


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step count, betas used last, and both moments."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any
    nu: Any


def check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype):
    v.check_decay("b1", b1)
    v.check_decay("b2", b2)
    v.check_eps("eps", eps)
    v.check_eps("eps_root", eps_root)
    v.check_dtype("mu_dtype", mu_dtype)
    v.check_dtype("nu_dtype", nu_dtype)


def adam_moments(updates, state, b1, b2):
    """Both moments updated, and the step count after this update."""
    mu = update_moment(updates, state.mu, b1, 1)
    nu = update_moment(updates, state.nu, b2, 2)
    return mu, nu, increment(state.count)


def _adam_direction(mu, nu, updates, bc1, bc2, eps_root, eps_eff):
    """:func:`adam_direction_leaf` over the tree, ``v`` already maxed if AMSGrad."""

    def direction(g, m, n):
        dt = compute_dtype(g, m, n)
        return adam_direction_leaf(m, n, bc1, bc2, eps_root, eps_eff, dt).astype(g.dtype)

    return jax.tree.map(leafwise(direction), updates, mu, nu)


def scale_by_adam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    eps_before_bias_correction: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Adam's scaling (Kingma & Ba, 2015)::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        m_hat = m_t / (1 - b1^t),   v_hat = v_t / (1 - b2^t)
        u_t = m_hat / (sqrt(v_hat + eps_root) + eps)

    ``eps_before_bias_correction=True`` adds ``eps`` to ``sqrt(v_t)`` before the
    bias correction, i.e. uses ``eps / sqrt(1 - b2^t)`` above: the "epsilon hat"
    of the paper's section 2, which Keras uses. ``b1`` and ``b2`` may be
    schedules (the bias correction then uses the current value, as torch does).
    ``mu_dtype`` and ``nu_dtype`` choose the dtype of each moment (e.g. bfloat16
    for both, with the update computed in float32).
    """
    v.check_flags(eps_before_bias_correction=eps_before_bias_correction)
    check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    init_fn = init_state(ScaleByAdamState, specs, mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        mu, nu, count = adam_moments(updates, state, hp["b1"], hp["b2"])
        bc1, bc2 = bias_correction(hp["b1"], count), bias_correction(hp["b2"], count)
        eps_eff = adam_eps(eps, bc2, eps_before_bias_correction)
        updates = _adam_direction(mu, nu, updates, bc1, bc2, eps_root, eps_eff)
        return updates, ScaleByAdamState(count, hp, mu, nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`: as Adam's plus the running maximum ``nu_max``."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_amsgrad(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    eps_before_bias_correction: bool = False,
    max_of_bias_corrected: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AMSGrad (Reddi, Kale & Kumar, 2018): Adam with a non-decreasing second moment::

        v_max_t = max(v_max_{t-1}, v_hat_t)            (max_of_bias_corrected=True: optax)
        u_t = m_hat / (sqrt(v_max_t + eps_root) + eps)

        v_max_t = max(v_max_{t-1}, v_t)                (False: torch.optim, Keras)
        u_t = m_hat / (sqrt(v_max_t / (1 - b2^t) + eps_root) + eps)

    Other arguments as :func:`scale_by_adam`.
    """
    v.check_flags(
        eps_before_bias_correction=eps_before_bias_correction,
        max_of_bias_corrected=max_of_bias_corrected,
    )
    check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    init_fn = init_state(ScaleByAmsgradState, specs, mu_dtype, nu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        mu, nu, count = adam_moments(updates, state, hp["b1"], hp["b2"])
        bc1, bc2 = bias_correction(hp["b1"], count), bias_correction(hp["b2"], count)
        eps_eff = adam_eps(eps, bc2, eps_before_bias_correction)

        def running_max(g, n, n_max):
            dt = compute_dtype(g, n, n_max)
            n = n.astype(dt)
            if max_of_bias_corrected:
                n = n / bc2.astype(dt)
            return jnp.maximum(n_max.astype(dt), n).astype(n_max.dtype)

        nu_max = jax.tree.map(leafwise(running_max, keep=2), updates, nu, state.nu_max)
        one = jnp.ones([], float_dtype())
        updates = _adam_direction(
            mu, nu_max, updates, bc1, one if max_of_bias_corrected else bc2, eps_root, eps_eff
        )
        return updates, ScaleByAmsgradState(count, hp, mu, nu, nu_max)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- AdaMax


def scale_by_adamax(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdaMax, Adam with the infinity norm (Kingma & Ba, 2015, section 7.1)::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = max(b2 * v_{t-1}, |g_t| + eps),   u_t = m_t / ((1 - b1^t) * v_t)
                                                 (eps_in_max=True: optax, torch.optim)
        v_t = max(b2 * v_{t-1}, |g_t|),         u_t = m_t / ((1 - b1^t) * (v_t + eps))
                                                 (eps_in_max=False: Keras)

    State: :class:`ScaleByAdamState` (``nu`` holds the infinity norm ``v``).
    """
    v.check_flags(eps_in_max=eps_in_max)
    check_adam_args(b1, b2, eps, 0.0, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    init_fn = init_state(ScaleByAdamState, specs, mu_dtype, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        mu = update_moment(updates, state.mu, hp["b1"], 1)
        count = increment(state.count)
        bc1 = bias_correction(hp["b1"], count)

        def infinity_norm(g, n):
            dt = compute_dtype(g, n)
            a = jnp.abs(g.astype(dt))
            if eps_in_max:
                a = a + jnp.asarray(eps, a.dtype)
            return jnp.maximum(hp["b2"].astype(a.dtype) * n.astype(a.dtype), a).astype(n.dtype)

        nu = jax.tree.map(leafwise(infinity_norm, keep=1), updates, state.nu)

        def direction(g, m, n):
            dt = compute_dtype(g, m, n)
            n = n.astype(dt)
            if not eps_in_max:
                n = n + jnp.asarray(eps, dt)
            return (m.astype(dt) / bc1.astype(dt) / n).astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, mu, nu)
        return updates, ScaleByAdamState(count, hp, mu, nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Nadam


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`: as Adam's plus the product of momentum factors."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any
    nu: Any
    mu_product: jax.Array  # scalar, prod_{i<=t} mu_i


def scale_by_nadam(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    momentum_decay: float | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Nadam, Adam with Nesterov momentum (Dozat, 2016)::

        mu_t = b1 * (1 - 0.5 * 0.96^(t * psi))     (mu_t = b1 if momentum_decay is None)
        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        m_hat = mu_{t+1} * m_t / (1 - prod_{i<=t+1} mu_i)
                + (1 - mu_t) * g_t / (1 - prod_{i<=t} mu_i)
        u_t = m_hat / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    ``momentum_decay`` is ``psi``: ``None`` for optax's constant ``mu_t = b1``,
    ``0.004`` for torch.optim.NAdam, ``1.0`` for Keras (``0.96^t``).
    """
    check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    if momentum_decay is not None:
        v.check_number("momentum_decay", momentum_decay, lo=0.0)
    specs = {"b1": b1, "b2": b2}

    init_adam = init_state(ScaleByAdamState, specs, mu_dtype, nu_dtype)

    def init_fn(params):
        return ScaleByNadamState(*init_adam(params), jnp.ones([], float_dtype()))

    def momentum_at(b1_value, step):
        if momentum_decay is None:
            return b1_value
        return b1_value * (1 - 0.5 * 0.96 ** (step.astype(float_dtype()) * momentum_decay))

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        b1_t = hp["b1"]
        mu, nu, count = adam_moments(updates, state, b1_t, hp["b2"])
        mu_t, mu_next = momentum_at(b1_t, count), momentum_at(b1_t, count + 1)
        product = state.mu_product * mu_t
        c_m = mu_next / (1 - product * mu_next)
        c_g = (1 - mu_t) / (1 - product)
        bc2 = bias_correction(hp["b2"], count)

        def direction(g, m, n):
            dt = compute_dtype(g, m, n)
            m_hat = c_m.astype(dt) * m.astype(dt) + c_g.astype(dt) * g.astype(dt)
            den = jnp.sqrt(n.astype(dt) / bc2.astype(dt) + jnp.asarray(eps_root, dt)) + eps
            return (m_hat / den).astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, mu, nu)
        return updates, ScaleByNadamState(count, hp, mu, nu, product)

    return GradientTransformation(init_fn, update_fn)
