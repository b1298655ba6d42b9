"""Training a Flax Linen model with accel_jax: ``TrainState`` and per-group optimizers.

An accel_jax optimizer is an optax ``GradientTransformation``, so it is the ``tx``
of a ``flax.training.train_state.TrainState``. This example gives the hidden layers
and the output layer different optimizers with :func:`accel_jax.partition`
(Nesterov momentum for the body, Adam for the head), and lowers the body's learning
rate half-way with :func:`accel_jax.set_hyperparams` without recompiling the step::

    python examples/flax_linen.py [--quick]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax.training import train_state  # noqa: E402

import accel_jax as aj  # noqa: E402


class MLP(nn.Module):
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"body_{i}")(x))
        return nn.Dense(_common.NUM_CLASSES, name="head")(x)


@jax.jit
def train_step(state: train_state.TrainState, x, y):
    def loss_fn(params):
        return _common.cross_entropy(state.apply_fn({"params": params}, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def evaluate(state: train_state.TrainState, x, y):
    return _common.accuracy(state.apply_fn({"params": state.params}, x), y)


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 20)")
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 20)
    data = _common.load_digits()

    model = MLP()
    params = model.init(jax.random.key(0), data.x_train[:1])["params"]
    tx = aj.partition(
        {"body": aj.sgd(0.05, momentum=0.9, nesterov=True), "head": aj.adam(1e-3)},
        aj.path_labels(lambda path, _: path.split("/")[0].split("_")[0]),  # "body" or "head"
    )
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    rng = np.random.default_rng(0)
    batch = 32
    losses = []
    for epoch in _common.progress(range(epochs), "epochs"):
        if epoch == epochs // 2 and epoch > 0:
            # The body's learning rate to a tenth, the head's unchanged: set_hyperparams
            # on the body's part of the PartitionState only.
            groups = dict(state.opt_state.inner_states)
            body_lr = aj.get_hyperparams(groups["body"])["learning_rate"]
            groups["body"] = aj.set_hyperparams(groups["body"], learning_rate=body_lr / 10)
            state = state.replace(opt_state=state.opt_state._replace(inner_states=groups))
        for x, y in _common.epoch_batches(data, batch, rng):
            state, loss = train_step(state, x, y)
            losses.append(float(loss))
    acc = float(evaluate(state, data.x_val, data.y_val))
    rates = {
        group: float(aj.get_hyperparams(group_state)["learning_rate"])
        for group, group_state in state.opt_state.inner_states.items()
    }
    print(f"{epochs} epochs, {len(losses)} steps: minibatch loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}, validation accuracy {100 * acc:.1f}%; learning rates now: "
          + ", ".join(f"{group} {lr:.3g}" for group, lr in rates.items()))
    return {"losses": losses, "val_accuracy": acc, "learning_rates": rates}


if __name__ == "__main__":
    main()
