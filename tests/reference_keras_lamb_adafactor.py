"""Keras 3's Lamb and Adafactor in NumPy: the Keras reference of their conformance tests.

Each class transcribes ``update_step`` of ``keras/src/optimizers/lamb.py`` and
``keras/src/optimizers/adafactor.py`` (Keras 3.15) operation by operation, with
Keras' defaults, on top of :class:`tests.reference_keras.Optimizer` (Keras'
``BaseOptimizer.apply``: decoupled weight decay ``w <- w - w * wd * lr`` first, then
the update step). Arithmetic runs in the variables' dtype (see that module).

The constructors take accel_jax's / optax's argument names (the conformance
variants pass the same arguments to every ecosystem) and map them to Keras':
``weight_decay_rate`` -> ``weight_decay``, ``clipping_threshold`` -> ``clip_threshold``,
``decay_rate`` -> ``-beta_2_decay``; ``min_dim_size_to_factor`` is accepted and
ignored (Keras factors the last two axes of every variable with two or more).
"""

from __future__ import annotations

import numpy as np

from tests.reference_keras import Optimizer


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x)))


class Lamb(Optimizer):
    def __init__(self, learning_rate, b1=0.9, b2=0.999, eps=1e-7, weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.beta_1, self.beta_2, self.epsilon = b1, b2, eps

    def build(self, w):
        return {"m": np.zeros_like(w), "v": np.zeros_like(w)}

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        local_step = dt(self.iterations + 1)
        beta_1_power = dt(self.beta_1) ** local_step
        beta_2_power = dt(self.beta_2) ** local_step
        s["m"] = s["m"] + (g - s["m"]) * (1 - self.beta_1)
        s["v"] = s["v"] + (np.square(g) - s["v"]) * (1 - self.beta_2)
        m_t_hat = s["m"] / (1.0 - beta_1_power)
        v_sqrt = np.sqrt(s["v"] / (1.0 - beta_2_power)) + self.epsilon
        update = m_t_hat / v_sqrt
        w_norm = np.sqrt(np.sum(w**2))
        g_norm = np.sqrt(np.sum(update**2))
        ratio = (w_norm / g_norm) if (w_norm > 0 and g_norm > 0) else dt(1.0)
        return w - ratio * lr * update


class Adafactor(Optimizer):
    def __init__(
        self,
        learning_rate,
        decay_rate=0.8,
        eps=1e-30,
        min_scale=1e-3,
        clipping_threshold=1.0,
        relative_step=True,
        weight_decay_rate=None,
        min_dim_size_to_factor=None,
    ):
        super().__init__(learning_rate, weight_decay_rate)
        self.beta_2_decay = -decay_rate
        self.epsilon_1, self.epsilon_2 = eps, min_scale
        self.clip_threshold, self.relative_step = clipping_threshold, relative_step

    def build(self, w):
        if w.ndim < 2:
            return {"v": np.zeros_like(w)}
        return {
            "r": np.zeros(w.shape[:-1], w.dtype),
            "c": np.zeros(w.shape[:-2] + (w.shape[-1],), w.dtype),
            "v": np.zeros_like(w),
        }

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        epsilon_2, one = dt(self.epsilon_2), dt(1.0)
        local_step = dt(self.iterations + 1)
        # Keras skips this for a schedule, but rho_t below takes the same minimum.
        if not callable(self._learning_rate) and self.relative_step:
            lr = np.minimum(lr, 1 / np.sqrt(local_step))
        rho_t = np.minimum(lr, 1 / np.sqrt(local_step))
        alpha_t = np.maximum(epsilon_2, _rms(w)) * rho_t
        regulated_grad_square = np.square(g) + self.epsilon_1
        beta_2_t = 1 - np.power(local_step, dt(self.beta_2_decay))
        if w.ndim >= 2:
            s["r"] = beta_2_t * s["r"] + (1 - beta_2_t) * np.mean(regulated_grad_square, axis=-1)
            s["c"] = beta_2_t * s["c"] + (1 - beta_2_t) * np.mean(regulated_grad_square, axis=-2)
            s["v"] = np.expand_dims(
                s["r"] / np.mean(s["r"], axis=-1, keepdims=True), axis=-1
            ) * np.expand_dims(s["c"], -2)
        else:
            s["v"] = beta_2_t * s["v"] + (1 - beta_2_t) * regulated_grad_square
        u_t = g / np.sqrt(s["v"])
        u_t_hat = u_t / np.maximum(one, _rms(u_t) / dt(self.clip_threshold))
        return w - alpha_t * u_t_hat
