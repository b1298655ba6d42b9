"""Adaptive scalings: AdaGrad, RMSProp (plain and centered), and the helpers of Adam's family.

Notation: ``g`` the incoming update (gradient), ``t`` the 1-based step, ``m`` the
first moment, ``s``/``v`` the second moment, ``eps`` the stability constant. Each
block returns the *direction*; a learning-rate scaling follows it in the chain.
Scalars (bias corrections) are computed once per step in the default float dtype
and cast to each leaf's computation dtype, the wider of the gradient's and the
state's dtype, so bf16 params with float32 moments are updated in float32.

The keyword-only switches reproduce the conventions of other frameworks; the
table in ``docs/conformance.md`` gives the settings per framework. Adam, AMSGrad,
AdaMax and Nadam are in :mod:`accel_jax.transforms.adam`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    check_structure,
    compute_dtype,
    full_like_tree,
    leafwise,
    update_moment,
    zeros_like_tree,
)
from accel_jax.hyperparams import float_dtype, increment


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def bias_correction(beta: jax.Array, count: jax.Array) -> jax.Array:
    """``1 - beta**t`` in the default float dtype."""
    return 1 - beta ** count.astype(float_dtype())


def _square(g: jax.Array) -> jax.Array:
    return jnp.abs(g) ** 2 if jnp.iscomplexobj(g) else g * g


def _denominator(second_moment: jax.Array, eps: Any, eps_in_sqrt: bool) -> jax.Array:
    return jnp.sqrt(second_moment + eps) if eps_in_sqrt else jnp.sqrt(second_moment) + eps


# --------------------------------------------------------------------------- AdaGrad


class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`: step count and the sum of squared gradients."""

    count: jax.Array  # int32
    sum_of_squares: Any


def scale_by_adagrad(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """AdaGrad's per-coordinate scaling (Duchi et al., 2011)::

        s_t = s_{t-1} + g_t^2            (s_0 = initial_accumulator_value)
        u_t = g_t / sqrt(s_t + eps)      (eps_in_sqrt=True: optax, Keras)
        u_t = g_t / (sqrt(s_t) + eps)    (eps_in_sqrt=False: torch.optim)

    With ``eps=0`` a coordinate whose accumulator is still 0 gets a 0 update
    (instead of 0/0).
    """
    v.check_flags(eps_in_sqrt=eps_in_sqrt)
    v.check_number("initial_accumulator_value", initial_accumulator_value, lo=0.0)
    v.check_eps("eps", eps)
    v.check_dtype("nu_dtype", nu_dtype)

    def init_fn(params):
        return ScaleByAdagradState(
            _zero_count(), full_like_tree(params, initial_accumulator_value, nu_dtype)
        )

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.sum_of_squares, "the optimizer state (sum_of_squares)")

        def accumulate(g, s):
            dt = compute_dtype(g, s)
            return (s.astype(dt) + _square(g.astype(dt))).astype(s.dtype)

        sums = jax.tree.map(leafwise(accumulate, keep=1), updates, state.sum_of_squares)

        def direction(g, s):
            dt = compute_dtype(g, s)
            s = s.astype(dt)
            u = g.astype(dt) / _denominator(s, jnp.asarray(eps, dt), eps_in_sqrt)
            # s == 0 only where every gradient so far was 0 (u = 0, not 0/0 when eps = 0);
            # no Python branch on eps: inject_hyperparams passes it as an array.
            u = jnp.where(s > 0, u, jnp.zeros_like(u))
            return u.astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, sums)
        return updates, ScaleByAdagradState(increment(state.count), sums)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- RMSProp


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: step count and the average of squared gradients."""

    count: jax.Array  # int32
    nu: Any


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    eps_in_sqrt: bool = True,
    initial_scale: float = 0.0,
    nu_dtype: Any = None,
    bias_correction: bool = False,
) -> GradientTransformation:
    """RMSProp's scaling (Hinton, Coursera lecture 6e, 2012)::

        v_t = decay * v_{t-1} + (1 - decay) * g_t^2     (v_0 = initial_scale)
        u_t = g_t / sqrt(v_t + eps)      (eps_in_sqrt=True: optax, Keras)
        u_t = g_t / (sqrt(v_t) + eps)    (eps_in_sqrt=False: torch.optim)

    ``bias_correction=True`` uses ``v_t / (1 - decay^t)`` (optax's option: with
    ``eps_in_sqrt=False`` it is Adam with ``b1 = 0``).
    """
    v.check_flags(eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)
    v.check_decay("decay", decay, allow_schedule=False)
    v.check_eps("eps", eps)
    v.check_number("initial_scale", initial_scale, lo=0.0)
    v.check_dtype("nu_dtype", nu_dtype)
    correct_bias = bias_correction  # (the argument shadows the module's helper)

    def init_fn(params):
        return ScaleByRmsState(_zero_count(), full_like_tree(params, initial_scale, nu_dtype))

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.nu, "the optimizer state (nu)")
        d = jnp.asarray(decay, float_dtype())
        nu = update_moment(updates, state.nu, d, 2)
        count = increment(state.count)
        correction = 1 - d ** count.astype(float_dtype()) if correct_bias else jnp.ones_like(d)

        def direction(g, n):
            dt = compute_dtype(g, n)
            n = n.astype(dt) / correction.astype(dt)
            den = _denominator(n, jnp.asarray(eps, dt), eps_in_sqrt)
            return (g.astype(dt) / den).astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, nu)
        return updates, ScaleByRmsState(count, nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByStddevState(NamedTuple):
    """State of :func:`scale_by_stddev`: step count, mean and mean square of gradients."""

    count: jax.Array  # int32
    mu: Any
    nu: Any


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    eps_in_sqrt: bool = True,
    initial_scale: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    """Centered RMSProp: divides by an estimate of the gradient's standard deviation::

        m_t = decay * m_{t-1} + (1 - decay) * g_t
        v_t = decay * v_{t-1} + (1 - decay) * g_t^2
        u_t = g_t / sqrt(v_t - m_t^2 + eps)      (eps_in_sqrt=True: optax, Keras)
        u_t = g_t / (sqrt(v_t - m_t^2) + eps)    (eps_in_sqrt=False: torch.optim)

    Reference: Graves, "Generating sequences with recurrent neural networks", 2013.
    """
    v.check_flags(eps_in_sqrt=eps_in_sqrt)
    v.check_decay("decay", decay, allow_schedule=False)
    v.check_eps("eps", eps)
    v.check_number("initial_scale", initial_scale, lo=0.0)
    v.check_dtype("mu_dtype", mu_dtype)
    v.check_dtype("nu_dtype", nu_dtype)

    def init_fn(params):
        return ScaleByStddevState(
            _zero_count(),
            zeros_like_tree(params, mu_dtype),
            full_like_tree(params, initial_scale, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.nu, "the optimizer state (nu)")
        d = jnp.asarray(decay, float_dtype())
        mu = update_moment(updates, state.mu, d, 1)
        nu = update_moment(updates, state.nu, d, 2)

        def direction(g, m, n):
            dt = compute_dtype(g, m, n)
            var = n.astype(dt) - _square(m.astype(dt))
            return (g.astype(dt) / _denominator(var, jnp.asarray(eps, dt), eps_in_sqrt)).astype(
                g.dtype
            )

        updates = jax.tree.map(leafwise(direction), updates, mu, nu)
        return updates, ScaleByStddevState(increment(state.count), mu, nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adam helpers
# (shared by transforms.adam, transforms.rectified, transforms.quantized and the kernels)


def adam_eps(eps: float, bc2: jax.Array, eps_before_bias_correction: bool) -> jax.Array:
    """The eps added to ``sqrt(v_hat)``: ``eps``, or ``eps / sqrt(1 - b2^t)`` (Keras' eps hat)."""
    eps_eff = jnp.asarray(eps, float_dtype())
    return eps_eff / jnp.sqrt(bc2) if eps_before_bias_correction else eps_eff


def adam_direction_leaf(m, n, bc1, bc2, eps_root, eps_eff, dt) -> jax.Array:
    """``m_hat / (sqrt(v_hat + eps_root) + eps_eff)`` for one leaf, in ``dt``."""
    m_hat = m.astype(dt) / bc1.astype(dt)
    n_hat = n.astype(dt) / bc2.astype(dt)
    return m_hat / (jnp.sqrt(n_hat + jnp.asarray(eps_root, dt)) + eps_eff.astype(dt))
