"""Keras 3's Adadelta and Lion in NumPy: the Keras reference of the frontier conformance tests.

Transcribes ``update_step`` of ``keras/src/optimizers/adadelta.py`` and ``lion.py``
(Keras 3.15) operation by operation, with Keras' defaults, on the base class of
:mod:`tests.reference_keras` (decoupled weight decay ``w <- w - w * wd * lr`` on
every variable first, then the update steps; arithmetic in the variables' dtype).
Keras has no RAdam and no NAdamW: NAdamW's Keras cell is ``Nadam(weight_decay=...)``
of :mod:`tests.reference_keras`.
"""

from __future__ import annotations

import numpy as np

from tests.reference_keras import Optimizer


class Adadelta(Optimizer):
    def __init__(self, learning_rate, rho=0.95, epsilon=1e-7, weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.rho, self.epsilon = rho, epsilon

    def build(self, w):
        return {"accumulated_grad": np.zeros_like(w), "accumulated_delta_var": np.zeros_like(w)}

    def update_step(self, g, w, lr, s):
        rho = self.rho

        def rms(x):
            return np.sqrt(x + self.epsilon)

        s["accumulated_grad"] = rho * s["accumulated_grad"] + (1 - rho) * np.square(g)
        delta_var = -(rms(s["accumulated_delta_var"]) * g) / rms(s["accumulated_grad"])
        s["accumulated_delta_var"] = (
            rho * s["accumulated_delta_var"] + (1 - rho) * np.square(delta_var)
        )
        return w + lr * delta_var


class Lion(Optimizer):
    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.99, weight_decay=None, *,
                 b1=None, b2=None):  # b1, b2: accel_jax's (and optax's) names
        super().__init__(learning_rate, weight_decay)
        self.beta_1 = beta_1 if b1 is None else b1
        self.beta_2 = beta_2 if b2 is None else b2

    def build(self, w):
        return {"momentum": np.zeros_like(w)}

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        beta_1, beta_2 = dt(self.beta_1), dt(self.beta_2)
        m = s["momentum"]
        w = w - lr * np.sign(m * beta_1 + g * (1.0 - beta_1))
        s["momentum"] = m * beta_2 + g * (1.0 - beta_2)
        return w
