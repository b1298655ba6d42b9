"""Performance scheduling: halve the learning rate when the validation loss stops improving.

:func:`accel_jax.reduce_on_plateau` is a transformation fed the monitored value as
``update(..., value=...)``. Here the value is the validation loss, measured once per
epoch and fed with every step of the next epoch; ``accumulation_size`` = steps per
epoch makes the transformation judge it once per epoch (the seeds' "measure the
validation error every N steps and reduce the learning rate by a factor when it
stops dropping"). Two training loops, the same network and data:

* Flax Linen ``TrainState``: its ``apply_gradients`` does not forward ``value=`` to
  ``tx.update``, so the step calls ``aj.apply_gradients(state, grads, value=...)``;
* Flax NNX: ``nnx.Optimizer.update(model, grads, value=...)`` forwards it.

Each epoch prints the validation loss, the plateau scale and the effective
learning rate read from the optimizer state with :func:`accel_jax.get_hyperparams`::

    python examples/performance_scheduling.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

import accel_jax as aj  # noqa: E402

BATCH = 64


def make_optimizer(steps_per_epoch: int):
    """SGD with momentum, then the plateau scale: halve after 1 epoch without improvement."""
    return aj.chain(
        aj.sgd(0.1, momentum=0.9),
        aj.reduce_on_plateau(factor=0.5, patience=1, threshold=0.01,
                             accumulation_size=steps_per_epoch),
    )


def epochs_of_batches(data: _common.Digits, epochs: int):
    rng = np.random.default_rng(0)
    for _ in _common.progress(range(epochs), "epochs"):
        order = rng.permutation(len(data.y_train))
        yield [order[i : i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]


def report(framework: str, epoch: int, val_loss: float, opt_state) -> dict:
    hp = aj.get_hyperparams(opt_state)
    scale, lr = float(hp["scale"]), float(hp["learning_rate"])
    print(f"  [{framework}] epoch {epoch:2d}: validation loss {val_loss:.4f}, scale {scale:.3g}, "
          f"effective learning rate {lr * scale:.3g}")
    return {"val_loss": val_loss, "scale": scale}


# --- Flax Linen: TrainState, with aj.apply_gradients forwarding value= ---


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(_common.NUM_CLASSES)(x)


@jax.jit
def linen_train_step(state: train_state.TrainState, x, y, val_loss):
    def loss_fn(params):
        return _common.cross_entropy(state.apply_fn({"params": params}, x), y)

    grads = jax.grad(loss_fn)(state.params)
    # Not state.apply_gradients(grads=grads): it would call tx.update without value=.
    return aj.apply_gradients(state, grads, value=val_loss)


@jax.jit
def linen_val_loss(state: train_state.TrainState, x, y):
    return _common.cross_entropy(state.apply_fn({"params": state.params}, x), y)


def run_linen(data: _common.Digits, epochs: int) -> list[dict]:
    steps_per_epoch = len(data.y_train) // BATCH
    model = MLP()
    params = model.init(jax.random.key(0), data.x_train[:1])["params"]
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=make_optimizer(steps_per_epoch)
    )
    val_loss = linen_val_loss(state, data.x_val, data.y_val)
    history = []
    for epoch, batches in _common.progress(
            enumerate(epochs_of_batches(data, epochs)), "epochs", epochs):
        for idx in batches:  # every step of this epoch is fed the last validation loss
            state = linen_train_step(state, data.x_train[idx], data.y_train[idx], val_loss)
        val_loss = linen_val_loss(state, data.x_val, data.y_val)
        history.append(report("linen", epoch, float(val_loss), state.opt_state))
    return history


# --- Flax NNX: nnx.Optimizer.update forwards value= ---


@nnx.jit
def nnx_train_step(model, optimizer: nnx.Optimizer, x, y, val_loss):
    grads = nnx.grad(lambda m: _common.cross_entropy(m(x), y))(model)
    optimizer.update(model, grads, value=val_loss)


@nnx.jit
def nnx_val_loss(model, x, y):
    return _common.cross_entropy(model(x), y)


def run_nnx(data: _common.Digits, epochs: int) -> list[dict]:
    steps_per_epoch = len(data.y_train) // BATCH
    model = _common.make_nnx_mlp(seed=0, hidden=(64,))
    optimizer = nnx.Optimizer(model, make_optimizer(steps_per_epoch), wrt=nnx.Param)
    val_loss = nnx_val_loss(model, data.x_val, data.y_val)
    history = []
    for epoch, batches in _common.progress(
            enumerate(epochs_of_batches(data, epochs)), "epochs", epochs):
        for idx in batches:
            nnx_train_step(model, optimizer, data.x_train[idx], data.y_train[idx], val_loss)
        val_loss = nnx_val_loss(model, data.x_val, data.y_val)
        opt_state = nnx.as_pure(optimizer.opt_state)  # plain arrays, for get_hyperparams
        history.append(report("nnx", epoch, float(val_loss), opt_state))
    return history


def main(argv: list[str] | None = None) -> dict:
    args = _common.parser(__doc__.splitlines()[0]).parse_args(argv)
    epochs = 10 if args.quick else 25
    data = _common.load_digits()
    with jax.numpy_dtype_promotion("standard"):  # Flax's layers rely on implicit promotion
        linen = run_linen(data, epochs)
        nnx_history = run_nnx(data, epochs)
    for name, history in (("linen", linen), ("nnx", nnx_history)):
        scales = [h["scale"] for h in history]
        drops = [i for i in range(1, len(scales)) if scales[i] < scales[i - 1]]
        print(f"{name}: best validation loss {min(h['val_loss'] for h in history):.4f}; "
              f"learning rate halved after epochs {drops} (final scale {scales[-1]:.3g})")
    return {"linen": linen, "nnx": nnx_history}


if __name__ == "__main__":
    main()
