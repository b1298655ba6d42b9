"""Training a Haiku model with accel_jax: ``hk.transform`` and a functional step.

(Named ``dm_haiku.py``, after the package, because a script called ``haiku.py``
would shadow the ``haiku`` package it imports.) Haiku keeps params in a plain
nested dict, which is what accel_jax transformations take. Here: Nadam with
Keras' conventions (``convention="keras"``: Keras' epsilon and momentum schedule)
after coupled L2 regularization (``add_decayed_weights`` first in the chain, so the
decay term enters Nadam's moments, like torch.optim's ``weight_decay``)::

    python examples/dm_haiku.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import haiku as hk  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import accel_jax as aj  # noqa: E402


def forward(x):
    mlp = hk.nets.MLP([64, 64, _common.NUM_CLASSES], activation=jax.nn.relu)
    return mlp(x)


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 20)")
    args = p.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 20)
    data = _common.load_digits()

    net = hk.without_apply_rng(hk.transform(forward))
    params = net.init(jax.random.key(0), data.x_train[:1])
    tx = aj.chain(aj.add_decayed_weights(1e-4), aj.nadam(1e-3, convention="keras"))
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss_fn = lambda p: _common.cross_entropy(net.apply(p, x), y)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in _common.progress(range(epochs), "epochs"):
        for x, y in _common.epoch_batches(data, 32, rng):
            params, opt_state, loss = train_step(params, opt_state, x, y)
            losses.append(float(loss))
    acc = float(_common.accuracy(net.apply(params, data.x_val), data.y_val))
    print(f"{epochs} epochs, {len(losses)} steps of L2 + Nadam (Keras conventions): minibatch "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, validation accuracy {100 * acc:.1f}%")
    return {"losses": losses, "val_accuracy": acc}


if __name__ == "__main__":
    main()
