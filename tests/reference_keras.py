"""Keras 3's optimizers in NumPy: the Keras reference of ``tests/test_conformance.py``.

Each class transcribes ``update_step`` of ``keras/src/optimizers/<name>.py`` (Keras
3.x) operation by operation, with Keras' defaults, and :class:`Optimizer` its base
class's ``apply``: decoupled weight decay ``w <- w - w * wd * lr`` on every variable
first, then the update step of every variable, then ``iterations += 1``. The
learning rate of step ``k`` is ``learning_rate(k)`` with ``k = iterations``
(0-based), as for a Keras ``LearningRateSchedule``.

Arithmetic runs in the variables' dtype: Keras casts the learning rate, the
gradient and the tensors it names (``ops.cast(self.beta_1, dtype)``) to it, and a
bare Python float hyperparameter (``1 - self.beta_1``) is weakly typed, as NumPy
(>= 2, NEP 50) treats it too. This models Keras with ``floatx`` equal to the
variables' dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Params = dict[str, np.ndarray]


class Optimizer:
    """Keras' ``BaseOptimizer.apply`` for a dict of NumPy params."""

    def __init__(self, learning_rate: float | Callable[[int], float], weight_decay=None):
        self._learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.iterations = 0
        self._slots: dict[str, dict[str, np.ndarray]] | None = None

    def learning_rate(self) -> float:
        lr = self._learning_rate
        return lr(self.iterations) if callable(lr) else lr

    def build(self, params: Params) -> dict[str, np.ndarray]:
        """The optimizer variables of one model variable (zeros unless overridden)."""
        raise NotImplementedError

    def before_update(self, dtype) -> None:
        """Keras' ``_backend_update_step`` work before the per-variable updates."""

    def update_step(self, g: np.ndarray, w: np.ndarray, lr, s: dict) -> np.ndarray:
        raise NotImplementedError

    def apply(self, grads: Params, params: Params) -> Params:
        """One step: returns the new params (``s`` slots are updated in place)."""
        if self._slots is None:
            self._slots = {k: self.build(p) for k, p in params.items()}
        lr = self.learning_rate()
        params = dict(params)
        if self.weight_decay is not None:
            for k, w in params.items():
                dt = w.dtype
                params[k] = w - w * dt.type(self.weight_decay) * dt.type(lr)
        self.before_update(next(iter(params.values())).dtype)
        new = {}
        for k, w in params.items():
            dt = w.dtype
            new[k] = self.update_step(grads[k].astype(dt), w, dt.type(lr), self._slots[k])
        self.iterations += 1
        return new


def _zeros(w: np.ndarray) -> np.ndarray:
    return np.zeros_like(w)


class SGD(Optimizer):
    def __init__(self, learning_rate, momentum=0.0, nesterov=False, weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.momentum, self.nesterov = momentum, nesterov

    def build(self, w):
        return {"m": _zeros(w)} if self.momentum != 0 else {}

    def update_step(self, g, w, lr, s):
        if self.momentum == 0:
            return w - g * lr
        momentum = w.dtype.type(self.momentum)
        s["m"] = s["m"] * momentum - g * lr
        if self.nesterov:
            return w + (s["m"] * momentum - g * lr)
        return w + s["m"]


class Adagrad(Optimizer):
    def __init__(self, learning_rate, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon

    def build(self, w):
        return {"acc": np.full_like(w, self.initial_accumulator_value)}

    def update_step(self, g, w, lr, s):
        s["acc"] = s["acc"] + np.square(g)
        return w - (lr * g) / np.sqrt(s["acc"] + self.epsilon)


class RMSprop(Optimizer):
    def __init__(self, learning_rate, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def build(self, w):
        return {"velocity": _zeros(w), "momentum": _zeros(w), "average_grad": _zeros(w)}

    def update_step(self, g, w, lr, s):
        rho = self.rho
        s["velocity"] = rho * s["velocity"] + (1 - rho) * np.square(g)
        if self.centered:
            s["average_grad"] = rho * s["average_grad"] + (1 - rho) * g
            denominator = s["velocity"] - np.square(s["average_grad"]) + self.epsilon
        else:
            denominator = s["velocity"] + self.epsilon
        increment = (lr * g) / np.sqrt(denominator)
        if self.momentum > 0:
            s["momentum"] = self.momentum * s["momentum"] + increment
            return w - s["momentum"]
        return w - increment


class Adam(Optimizer):
    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def build(self, w):
        return {"m": _zeros(w), "v": _zeros(w), "v_hat": _zeros(w)}

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        local_step = dt(self.iterations + 1)
        beta_1_power = np.power(dt(self.beta_1), local_step)
        beta_2_power = np.power(dt(self.beta_2), local_step)
        alpha = lr * np.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        s["m"] = s["m"] + (g - s["m"]) * (1 - self.beta_1)
        s["v"] = s["v"] + (np.square(g) - s["v"]) * (1 - self.beta_2)
        v = s["v"]
        if self.amsgrad:
            s["v_hat"] = np.maximum(s["v_hat"], s["v"])
            v = s["v_hat"]
        return w - (s["m"] * alpha) / (np.sqrt(v) + self.epsilon)


class AdamW(Adam):
    def __init__(self, learning_rate, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay)


class Adamax(Optimizer):
    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, w):
        return {"m": _zeros(w), "u": _zeros(w)}

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        beta_1_power = np.power(dt(self.beta_1), dt(self.iterations + 1))
        s["m"] = s["m"] + (g - s["m"]) * (1 - self.beta_1)
        s["u"] = np.maximum(self.beta_2 * s["u"], np.abs(g))
        return w - (lr * s["m"]) / ((1 - beta_1_power) * (s["u"] + self.epsilon))


class Nadam(Optimizer):
    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None):
        super().__init__(learning_rate, weight_decay)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.u_product = None

    def build(self, w):
        return {"m": _zeros(w), "v": _zeros(w)}

    def before_update(self, dtype):
        dt = dtype.type
        if self.u_product is None:  # a variable of the first model variable's dtype
            self.u_product = dt(1.0)
        self.u_product = self.u_product * self.beta_1 * (
            1.0 - 0.5 * np.power(0.96, dt(self.iterations + 1))
        )

    def update_step(self, g, w, lr, s):
        dt = w.dtype.type
        local_step, next_step = dt(self.iterations + 1), dt(self.iterations + 2)
        decay, beta_1, beta_2 = dt(0.96), dt(self.beta_1), dt(self.beta_2)
        u_t = beta_1 * (1.0 - 0.5 * np.power(decay, local_step))
        u_t_1 = beta_1 * (1.0 - 0.5 * np.power(decay, next_step))
        u_product_t = dt(self.u_product)
        u_product_t_1 = u_product_t * u_t_1
        beta_2_power = np.power(beta_2, local_step)
        s["m"] = s["m"] + (g - s["m"]) * (1 - beta_1)
        s["v"] = s["v"] + (np.square(g) - s["v"]) * (1 - beta_2)
        m_hat = (u_t_1 * s["m"]) / (1 - u_product_t_1) + ((1 - u_t) * g) / (1 - u_product_t)
        v_hat = s["v"] / (1 - beta_2_power)
        return w - (m_hat * lr) / (np.sqrt(v_hat) + self.epsilon)
