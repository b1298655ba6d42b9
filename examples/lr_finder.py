"""The learning-rate range test on scikit-learn's digits, and a short training at the suggestion.

:func:`accel_jax.find_learning_rate` trains a fresh MLP for a few hundred minibatch
steps while the learning rate grows exponentially from ``1e-5`` to ``10``, stops
once the smoothed loss explodes, and suggests a tenth of the rate at the loss
minimum. The example writes the loss-versus-learning-rate plot, then trains the
same initial network for a few epochs at the suggested rate, at a hundredth of it
and at ten times the turning point, and prints the validation accuracies::

    python examples/lr_finder.py [--quick] [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import accel_jax as aj  # noqa: E402


def optimizer(learning_rate):
    """The optimizer under test: SGD with Nesterov momentum, as a function of the rate."""
    return aj.sgd(learning_rate, momentum=0.9, nesterov=True)


def loss_fn(params, batch):
    x, y = batch
    return _common.mlp_loss(params, x, y)


def train(params, learning_rate: float, batches: list, epochs: int, data) -> float:
    """Validation accuracy after ``epochs`` passes over ``batches`` at a constant rate
    (``nan`` when training diverged: the logits are no longer finite)."""
    tx = optimizer(learning_rate)

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return aj.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in _common.progress(range(epochs), "epochs"):
        for batch in batches:
            params, state = step(params, state, batch)
    logits = _common.mlp_apply(params, data.x_val)
    accuracy = float(_common.accuracy(logits, data.y_val))
    return accuracy if np.all(np.isfinite(np.asarray(logits))) else float("nan")


def main(argv: list[str] | None = None) -> dict:
    args = _common.parser(__doc__.splitlines()[0]).parse_args(argv)
    data = _common.load_digits()
    # One epoch of 44 batches, cycled by the range test.
    batches = list(_common.epoch_batches(data, 32, np.random.default_rng(0)))
    params = _common.init_mlp(jax.random.key(0))

    result = aj.find_learning_rate(
        loss_fn, params, optimizer, batches,
        min_lr=1e-5, max_lr=10.0, num_steps=100 if args.quick else 300,
    )
    turning = float(result.learning_rates[np.argmin(result.smoothed_losses)])
    print(f"range test: {len(result.losses)} steps, diverged={result.diverged}; smoothed loss "
          f"lowest at lr={turning:.3g}")
    for rule, lr in result.suggestions.items():
        print(f"  suggestion ({rule}): {lr:.3g}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = result.plot()
    ax.set_title("learning-rate range test: MLP on digits, SGD + Nesterov 0.9")
    ax.figure.tight_layout()  # room for the axis labels
    path = os.path.join(_common.out_dir(args.out), "lr_finder.png")
    ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"wrote {path}")

    epochs = 1 if args.quick else 3
    accuracies = {}
    for label, lr in [("suggested", result.suggested_lr),
                      ("suggested / 100", result.suggested_lr / 100),
                      ("10 x turning point", 10 * turning)]:
        accuracies[label] = train(params, lr, batches, epochs, data)
        outcome = (f"validation accuracy {100 * accuracies[label]:.1f}%"
                   if np.isfinite(accuracies[label]) else "diverged (the weights are not finite)")
        print(f"  {epochs} epoch(s) at lr={lr:.3g} ({label}): {outcome}")
    return {"result": result, "plot": path, "accuracies": accuracies}


if __name__ == "__main__":
    main()
