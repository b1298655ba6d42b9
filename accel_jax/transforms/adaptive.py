"""Adaptive scalings: AdaGrad, RMSProp (plain and centered), Adam, AMSGrad, AdaMax, Nadam.

Notation: ``g`` the incoming update (gradient), ``t`` the 1-based step, ``m`` the
first moment, ``s``/``v`` the second moment, ``eps`` the stability constant. Each
block returns the *direction*; a learning-rate scaling follows it in the chain.
Scalars (bias corrections) are computed once per step in the default float dtype
and cast to each leaf's computation dtype, the wider of the gradient's and the
state's dtype, so bf16 params with float32 moments are updated in float32.

The keyword-only switches reproduce the conventions of other frameworks; the
table in ``docs/conformance.md`` gives the settings per framework.
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
    full_like_tree,
    leafwise,
    update_moment,
    zeros_like_tree,
)
from accel_jax.hyperparams import current_hyperparams, float_dtype, increment, init_hyperparams


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


# --------------------------------------------------------------------------- Adam


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: step count, betas used last, and both moments."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any
    nu: Any


def _check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype):
    v.check_decay("b1", b1)
    v.check_decay("b2", b2)
    v.check_eps("eps", eps)
    v.check_eps("eps_root", eps_root)
    v.check_dtype("mu_dtype", mu_dtype)
    v.check_dtype("nu_dtype", nu_dtype)


def _adam_moments(updates, state, b1, b2):
    """Both moments updated, and the step count after this update."""
    mu = update_moment(updates, state.mu, b1, 1)
    nu = update_moment(updates, state.nu, b2, 2)
    return mu, nu, increment(state.count)


def adam_eps(eps: float, bc2: jax.Array, eps_before_bias_correction: bool) -> jax.Array:
    """The eps added to ``sqrt(v_hat)``: ``eps``, or ``eps / sqrt(1 - b2^t)`` (Keras' eps hat)."""
    eps_eff = jnp.asarray(eps, float_dtype())
    return eps_eff / jnp.sqrt(bc2) if eps_before_bias_correction else eps_eff


def adam_direction_leaf(m, n, bc1, bc2, eps_root, eps_eff, dt) -> jax.Array:
    """``m_hat / (sqrt(v_hat + eps_root) + eps_eff)`` for one leaf, in ``dt``."""
    m_hat = m.astype(dt) / bc1.astype(dt)
    n_hat = n.astype(dt) / bc2.astype(dt)
    return m_hat / (jnp.sqrt(n_hat + jnp.asarray(eps_root, dt)) + eps_eff.astype(dt))


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
    _check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    def init_fn(params):
        return ScaleByAdamState(
            _zero_count(),
            init_hyperparams(**specs),
            zeros_like_tree(params, mu_dtype),
            zeros_like_tree(params, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        mu, nu, count = _adam_moments(updates, state, hp["b1"], hp["b2"])
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
    _check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    def init_fn(params):
        return ScaleByAmsgradState(
            _zero_count(),
            init_hyperparams(**specs),
            zeros_like_tree(params, mu_dtype),
            zeros_like_tree(params, nu_dtype),
            zeros_like_tree(params, nu_dtype),
        )

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        mu, nu, count = _adam_moments(updates, state, hp["b1"], hp["b2"])
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
    _check_adam_args(b1, b2, eps, 0.0, mu_dtype, nu_dtype)
    specs = {"b1": b1, "b2": b2}

    def init_fn(params):
        return ScaleByAdamState(
            _zero_count(),
            init_hyperparams(**specs),
            zeros_like_tree(params, mu_dtype),
            zeros_like_tree(params, nu_dtype),
        )

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
    _check_adam_args(b1, b2, eps, eps_root, mu_dtype, nu_dtype)
    if momentum_decay is not None:
        v.check_number("momentum_decay", momentum_decay, lo=0.0)
    specs = {"b1": b1, "b2": b2}

    def init_fn(params):
        return ScaleByNadamState(
            _zero_count(),
            init_hyperparams(**specs),
            zeros_like_tree(params, mu_dtype),
            zeros_like_tree(params, nu_dtype),
            jnp.ones([], float_dtype()),
        )

    def momentum_at(b1_value, step):
        if momentum_decay is None:
            return b1_value
        return b1_value * (1 - 0.5 * 0.96 ** (step.astype(float_dtype()) * momentum_decay))

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.mu, "the optimizer state (mu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        b1_t = hp["b1"]
        mu, nu, count = _adam_moments(updates, state, b1_t, hp["b2"])
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
