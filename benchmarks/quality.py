"""Training quality with smaller optimizer state: an MLP on scikit-learn's digits.

Used by ``benchmarks/step_time.py`` and by ``tests/test_quantized.py``: the same
network, data order and step count for every optimizer, so the final losses
compare the state formats (float32, bfloat16 moments, 8-bit block-wise) alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import accel_jax as aj

HIDDEN = 512  # w0 (64 x 512) and w1 (512 x 10) are both large enough to be quantized


def digits_problem(seed: int = 0):
    """``(params, X, y)``: a 64-512-10 ReLU MLP and the digits data (float32, int32)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    params = {
        "w0": jnp.asarray(rng.normal(size=(64, HIDDEN)) / 8.0, jnp.float32),
        "b0": jnp.zeros(HIDDEN, jnp.float32),
        "w1": jnp.asarray(rng.normal(size=(HIDDEN, 10)) / np.sqrt(HIDDEN), jnp.float32),
        "b1": jnp.zeros(10, jnp.float32),
    }
    return params, (x / 16.0).astype(np.float32), y.astype(np.int32)


def digits_loss(params, x, y):
    """Mean cross-entropy of the MLP on ``(x, y)``."""
    h = jax.nn.relu(x @ params["w0"] + params["b0"])
    logits = h @ params["w1"] + params["b1"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def train_digits(tx, steps: int = 500, batch_size: int = 128, seed: int = 1, kernel=None):
    """Trains with ``tx`` on mini-batches; returns ``(final full-data loss, state bytes)``.

    ``kernel``: as :func:`accel_jax.apply_step` (``True``: the native CPU kernel).
    """
    params, x, y = digits_problem()
    state = tx.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        grads = jax.grad(digits_loss)(params, xb, yb)
        return aj.apply_step(tx, params, state, grads, kernel=kernel)

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch_size)
        params, state = step(params, state, x[idx], y[idx])
    return float(digits_loss(params, x, y)), aj.state_bytes(state)


def state_formats(learning_rate: float = 1e-3) -> dict:
    """The Adam state formats compared: float32, bfloat16 moments, 8-bit block-wise."""
    return {
        "float32": aj.adam(learning_rate),
        "bfloat16 moments": aj.adam(learning_rate, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "8-bit block-wise": aj.adam(learning_rate, state_bits=8),
    }
