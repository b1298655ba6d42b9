"""Training a Flax NNX model with an accel_jax optimizer: ``nnx.Optimizer`` and ``nnx.jit``.

An accel_jax optimizer is an optax ``GradientTransformation``, so it goes straight
into ``nnx.Optimizer``. Here: AdamW with the weight decay on kernels only (a mask
built from the parameter paths), on scikit-learn's digits::

    python examples/flax_nnx.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import accel_jax as aj  # noqa: E402


def loss_fn(model, x, y):
    return _common.cross_entropy(model(x), y)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)  # model params updated in place
    return loss


@nnx.jit
def evaluate(model, x, y):
    return _common.accuracy(model(x), y)


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 20)")
    args = p.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 20)
    data = _common.load_digits()

    model = _common.make_nnx_mlp(seed=0)
    decay_kernels = aj.path_labels(lambda path, _: path.endswith("kernel"))
    tx = aj.adamw(1e-3, weight_decay=1e-2, mask=decay_kernels)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng = np.random.default_rng(0)
    losses = []
    for _ in _common.progress(range(epochs), "epochs"):
        for x, y in _common.epoch_batches(data, 32, rng):
            losses.append(float(train_step(model, optimizer, x, y)))
        acc = float(evaluate(model, data.x_val, data.y_val))
    lr = float(aj.get_hyperparams(nnx.as_pure(optimizer.opt_state))["learning_rate"])
    print(f"{epochs} epochs, {len(losses)} steps of adamw(lr={lr:g}): minibatch loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}, validation accuracy {100 * acc:.1f}%")
    return {"losses": losses, "val_accuracy": acc}


if __name__ == "__main__":
    main()
