"""Shared pieces of the examples: the data set, the network, the loss, the command line.

The data set is scikit-learn's ``digits`` (1,797 8x8 images of handwritten digits,
shipped inside scikit-learn: nothing is downloaded). Every example that trains a
classifier uses :func:`load_digits` and :func:`cross_entropy` from here, so they all
see the same split and the same standardization.
"""

from __future__ import annotations

import argparse
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import accel_jax as aj

NUM_FEATURES = 64
NUM_CLASSES = 10


class Digits(NamedTuple):
    """Standardized digits: float32 features, int32 labels, a fixed train/validation split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> Digits:
    """scikit-learn's digits, split (stratified, fixed seed) and standardized.

    The mean and standard deviation are those of the training part only.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # Border pixels that are constant (0) in the training split keep scale 1: dividing by a
    # tiny std would blow up the few validation images where they are not 0.
    std = np.where(std < 1e-6, 1.0, std)
    return Digits(
        ((x_train - mean) / std).astype(np.float32),
        y_train.astype(np.int32),
        ((x_val - mean) / std).astype(np.float32),
        y_val.astype(np.int32),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels`` (promotion-clean)."""
    log_probs = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.mean(picked)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose largest logit is the label."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def make_nnx_mlp(seed: int = 0, hidden: tuple[int, ...] = (64, 64)):
    """A Flax NNX MLP ``64 -> hidden... -> 10`` with ReLU activations.

    Imported lazily so that examples that do not use Flax do not need it.
    """
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs):
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            )

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    return MLP((NUM_FEATURES, *hidden, NUM_CLASSES), rngs=nnx.Rngs(seed))


def init_mlp(key: jax.Array, hidden: tuple[int, ...] = (64, 64)) -> dict:
    """Parameters of a plain-JAX MLP ``64 -> hidden... -> 10``: ``{"layer_i": {"w", "b"}}``.

    For the examples about devices and checkpoints, where a plain dict of arrays
    keeps the point (shardings, saving) in view. LeCun-normal weights, zero biases.
    """
    sizes = (NUM_FEATURES, *hidden, NUM_CLASSES)
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer_{i}": {
            "w": jax.nn.initializers.lecun_normal()(k, (a, b), jnp.float32),
            "b": jnp.zeros((b,), jnp.float32),
        }
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    }


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """Logits of the MLP of :func:`init_mlp` (ReLU between layers)."""
    n = len(params)
    for i in range(n):
        layer = params[f"layer_{i}"]
        x = x @ layer["w"] + layer["b"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cross-entropy of the MLP of :func:`init_mlp`."""
    return cross_entropy(mlp_apply(params, x), y)


def epoch_batches(data: Digits, batch: int, rng: np.random.Generator):
    """One shuffled epoch of full minibatches ``(x, y)`` (a fixed shape: steps compile once)."""
    order = rng.permutation(len(data.y_train))
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i : i + batch]
        yield data.x_train[idx], data.y_train[idx]


def random_batches(data: Digits, batch: int, steps: int, seed: int = 0):
    """``steps`` minibatches ``(x, y)``, each drawn without replacement; the same for a seed."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(data.y_train), batch, replace=False)
        yield data.x_train[idx], data.y_train[idx]


def train_single_device(tx, params, batches):
    """The plain loop on one device (the multi-device examples' reference):
    ``(params, opt_state, losses)``."""

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for x, y in batches:
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    return params, opt_state, losses


def max_relative_difference(a, b) -> float:
    """Largest ``max|a - b| / max|b|`` over the leaves (each leaf measured on its own scale)."""
    diffs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))), a, b)
    return max(jax.tree.leaves(diffs))


def parser(description: str, default_out: str = ".") -> argparse.ArgumentParser:
    """The command line every example shares: ``--quick`` and ``--out DIR``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="a few steps only (what the tests run)"
    )
    p.add_argument(
        "--out", default=default_out, help=f"folder for the files written (default: {default_out})"
    )
    return p


def progress(iterable, desc: str, total: int | None = None):
    """``iterable`` with a progress bar on standard error (tqdm; plain iteration without it)."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the examples extra; the loop runs the same without it
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)


def out_dir(path: str) -> str:
    """Creates ``path`` if needed and returns it."""
    os.makedirs(path, exist_ok=True)
    return path


def simulate_cpu_devices(n: int = 8) -> None:
    """Asks XLA for ``n`` CPU devices when no accelerator is configured.

    Must run before JAX initialises its backends (in practice: before the first
    ``import jax`` of the process, or at least before the first computation). Has
    no effect when ``XLA_FLAGS`` already asks for a device count, or when
    ``JAX_PLATFORMS`` names an accelerator.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    if platforms and platforms != "cpu":
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
