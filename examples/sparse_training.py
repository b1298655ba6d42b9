"""Training sparse models: dense vs strong L1 vs magnitude pruning, on scikit-learn's digits.

The seeds' recipe for a sparse network, measured: training as usual and then
zeroing the tiny weights gives little sparsity before accuracy drops; strong
L1 regularization (here as a proximal step, which produces exact zeros) does
better; magnitude pruning during training (TF-MOT's ``prune_low_magnitude``
schedule) reaches a chosen sparsity, 50%, 80% or 90% of the weights, and keeps
most of the accuracy. Every variant is one optimizer chain::

    dense      adam(lr)
    L1         chain(adam(lr), l1_proximal(l1, lr, mask=kernels))
    pruning    chain(adam(lr), prune_by_magnitude(s, begin_step=..., end_step=..., mask=kernels))

Sparsity is counted over the kernels (biases are neither regularized nor
pruned). Run ``python examples/sparse_training.py`` (about half a minute on
two CPU cores); ``--quick`` trains a few epochs only.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import accuracy, cross_entropy, load_digits, parser  # noqa: E402

import accel_jax as aj  # noqa: E402

SIZES = (64, 128, 64, 10)
LEARNING_RATE = 2e-3
BATCH = 64


def init_mlp(seed: int = 0) -> dict:
    """He-normal kernels, zero biases: ``{"layer0": {"kernel", "bias"}, ...}``."""
    rng = np.random.default_rng(seed)
    return {
        f"layer{i}": {
            "kernel": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
            "bias": jnp.zeros(b, jnp.float32),
        }
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True))
    }


def forward(params: dict, x: jax.Array) -> jax.Array:
    layers = [params[f"layer{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def kernels_only(params: dict) -> dict:
    """The mask selecting kernels (not biases), for regularization and pruning."""
    return aj.path_labels(lambda path, _: path.endswith("kernel"))(params)


def kernel_sparsity(params: dict) -> tuple[float, int]:
    """Fraction of exactly-zero kernel weights, and the number of nonzero params overall."""
    kernels = [v["kernel"] for v in params.values()]
    zeros = sum(int(jnp.sum(k == 0)) for k in kernels)
    total = sum(k.size for k in kernels)
    nonzero = sum(int(jnp.sum(v != 0)) for v in jax.tree.leaves(params))
    return zeros / total, nonzero


def train(tx, data, epochs: int, seed: int = 0) -> dict:
    """Mini-batch training, one jitted ``lax.scan`` over all steps."""
    n = len(data.x_train)
    steps_per_epoch = n // BATCH
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n)[: steps_per_epoch * BATCH] for _ in range(epochs)])
    batches = jnp.asarray(order.reshape(-1, BATCH))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    loss = lambda p, xb, yb: cross_entropy(forward(p, xb), yb)

    @jax.jit
    def run(params):
        def step(carry, idx):
            p, s = carry
            grads = jax.grad(loss)(p, x[idx], y[idx])
            updates, s = tx.update(grads, s, p)
            return (aj.apply_updates(p, updates), s), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
        return params

    return run(init_mlp(seed))


def prune_after_training(params: dict, sparsity: float) -> dict:
    """Post-hoc: zero the smallest ``sparsity`` fraction of each kernel (no retraining)."""
    tx = aj.prune_by_magnitude(sparsity, mask=kernels_only(params))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    return aj.apply_updates(params, updates)


def main(argv=None) -> list[tuple[str, float, int, float, float]]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    epochs = 3 if args.quick else 40
    data = load_digits()
    total_steps = epochs * (len(data.x_train) // BATCH)
    begin, end = int(0.2 * total_steps), int(0.7 * total_steps)
    frequency = max(1, (end - begin) // 10)
    mask = kernels_only(init_mlp())

    def pruning(s):
        return aj.chain(
            aj.adam(LEARNING_RATE),
            aj.prune_by_magnitude(
                s, begin_step=begin, end_step=end, frequency=frequency, mask=mask
            ),
        )

    variants = [
        ("dense", aj.adam(LEARNING_RATE)),
        (
            "strong L1 (prox, l1=0.2)",
            aj.chain(aj.adam(LEARNING_RATE), aj.l1_proximal(0.2, LEARNING_RATE, mask=mask)),
        ),
        ("pruning 50%", pruning(0.5)),
        ("pruning 80%", pruning(0.8)),
        ("pruning 90%", pruning(0.9)),
    ]
    x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    rows = []
    dense_params = None
    for name, tx in variants:
        start = time.perf_counter()
        params = jax.block_until_ready(train(tx, data, epochs))
        seconds = time.perf_counter() - start
        if name == "dense":
            dense_params = params
        acc = float(accuracy(forward(params, x_val), y_val))
        rows.append((name, *kernel_sparsity(params), acc, seconds))
    for s in (0.5, 0.8):
        params = prune_after_training(dense_params, s)
        acc = float(accuracy(forward(params, x_val), y_val))
        rows.append((f"dense, then zero smallest {s:.0%}", *kernel_sparsity(params), acc, 0.0))

    print(f"digits, MLP {SIZES}, adam lr={LEARNING_RATE}, {epochs} epochs, batch {BATCH}")
    header = (
        f"{'method':<34} {'kernel sparsity':>15} {'nonzero params':>14} "
        f"{'val accuracy':>12} {'train s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, sparsity, nonzero, acc, seconds in rows:
        print(f"{name:<34} {sparsity:>15.1%} {nonzero:>14d} {acc:>12.3f} {seconds:>8.1f}")
    return rows


if __name__ == "__main__":
    main()
