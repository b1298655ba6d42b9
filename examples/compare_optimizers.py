"""Compare the optimizers of the seeds' table on a real data set, with measured numbers.

The same Flax NNX MLP (64-64-64-10, ReLU), from the same initialization, trained on
scikit-learn's digits (shipped with scikit-learn, no download) with the same
minibatches, for the same number of epochs, by each optimizer of the seeds'
comparison table: SGD, Momentum, Nesterov, AdaGrad, RMSProp, Adam, AdaMax, Nadam,
AdamW. Every optimizer runs with ``convention="keras"`` and Keras' default learning
rate, so the run reproduces the setting the seeds' table describes (Keras classes
with their defaults; momentum 0.9 for the two momentum variants, as in the seeds).

Prints a markdown table (also written to ``OUT/comparison.md``) and writes the
training-loss curves to ``OUT/compare_optimizers.png``::

    python examples/compare_optimizers.py            # under a minute on 2 CPU cores
    python examples/compare_optimizers.py --quick    # a few steps: what the tests run
    python examples/compare_optimizers.py --lr AdaGrad=0.05 --only AdaGrad Adam
    python examples/compare_optimizers.py --lr-range-test  # each at the range test's rate

The training loss is measured on the whole training set after every epoch. The
stars mirror the seeds' two columns and are derived from the measurements:

* speed, from the epochs ``e`` needed to bring the training loss down to the
  target, against the fastest optimizer's ``e_min``: *** if ``e <= 2 e_min``,
  ** if ``e <= 4 e_min``, * if slower or never within the budget;
* quality, from the validation accuracy after the budget, against the best one:
  *** within 1 percentage point, ** within 3, * further behind (an optimizer that
  stops early, or one that generalizes worse).

The time column is the training steps alone: compilation and evaluation excluded.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import accel_jax as aj  # noqa: E402

# name -> (accel_jax function, its arguments besides the learning rate, Keras' default
# learning rate). All are built with convention="keras".
OPTIMIZERS: dict[str, tuple[str, dict[str, Any], float]] = {
    "SGD": ("sgd", {}, 0.01),
    "Momentum": ("sgd", {"momentum": 0.9}, 0.01),
    "Nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}, 0.01),
    "AdaGrad": ("adagrad", {}, 0.001),
    "RMSProp": ("rmsprop", {}, 0.001),
    "Adam": ("adam", {}, 0.001),
    "AdaMax": ("adamax", {}, 0.002),
    "Nadam": ("nadam", {}, 0.001),
    "AdamW": ("adamw", {}, 0.001),
}


def make_optimizer(name: str, learning_rate: float) -> aj.GradientTransformation:
    function, kwargs, _ = OPTIMIZERS[name]
    return getattr(aj, function)(learning_rate, **kwargs, convention="keras")


def describe_call(name: str, learning_rate: float) -> str:
    """The call, as shown in the table: ``sgd(0.01, momentum=0.9)``."""
    function, kwargs, _ = OPTIMIZERS[name]
    args = [f"{learning_rate:g}", *(f"{k}={v!r}" for k, v in kwargs.items())]
    return f"{function}({', '.join(args)})"


# The seeds' table, for the side-by-side column.
SEEDS_STARS = {
    "SGD": ("*", "***"),
    "Momentum": ("**", "***"),
    "Nesterov": ("**", "***"),
    "AdaGrad": ("***", "* (stops too early)"),
    "RMSProp": ("***", "** or ***"),
    "Adam": ("***", "** or ***"),
    "AdaMax": ("***", "** or ***"),
    "Nadam": ("***", "** or ***"),
    "AdamW": ("***", "** or ***"),
}


class Result(NamedTuple):
    name: str
    learning_rate: float
    train_loss: np.ndarray  # full training-set loss after each epoch (index 0: at init)
    val_accuracy: float
    seconds: float  # the training steps alone: compilation and evaluation excluded


def make_epoch_fns(model, data: _common.Digits, batch_size: int):
    """Returns ``make_epoch(tx)`` and ``evaluate(params) -> (train loss, val accuracy)``.

    ``make_epoch(tx)`` is ``run_epoch(params, opt_state, key)``: one ``lax.scan`` over
    the shuffled minibatches of the epoch, so there is one call per epoch.
    """
    from flax import nnx

    train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    graphdef = nnx.graphdef(model)
    n = train[0].shape[0]
    steps = n // batch_size

    def loss_fn(params, x, y):
        return _common.cross_entropy(nnx.merge(graphdef, params)(x), y)

    def make_epoch(tx):
        @jax.jit
        def run_epoch(params, opt_state, key, data=train):
            # jit makes the default-valued `data` an argument rather than a constant
            # baked into the program: XLA compiles it about three times faster.
            x, y = data

            def step(carry, idx):
                params, opt_state = carry
                grads = jax.grad(loss_fn)(params, x[idx], y[idx])
                updates, opt_state = tx.update(grads, opt_state, params)
                return (aj.apply_updates(params, updates), opt_state), None

            perm = jax.random.permutation(key, n)[: steps * batch_size]
            (params, opt_state), _ = jax.lax.scan(
                step, (params, opt_state), perm.reshape(steps, batch_size)
            )
            return params, opt_state

        return run_epoch

    @jax.jit
    def evaluate(params, train=train, val=val):
        logits = nnx.merge(graphdef, params)(val[0])
        return loss_fn(params, *train), _common.accuracy(logits, val[1])

    return make_epoch, evaluate, steps


def train_all(runs: dict[str, float], epochs: int, batch_size: int, seed: int, progress: bool):
    """Trains the same model from the same init on the same minibatches with each optimizer.

    ``runs`` maps an optimizer name of :data:`OPTIMIZERS` to its learning rate.
    Returns the results and the number of steps per epoch.
    """
    from flax import nnx
    from tqdm import tqdm

    data = _common.load_digits(seed=seed)
    model = _common.make_nnx_mlp(seed)
    params0 = nnx.state(model, nnx.Param)
    make_epoch, evaluate, steps = make_epoch_fns(model, data, batch_size)
    keys = jax.random.split(jax.random.key(seed), epochs)  # same minibatches for everyone

    results = []
    bar = tqdm(total=len(runs) * epochs, disable=not progress, unit="epoch", file=sys.stderr)
    for name, lr in runs.items():
        tx = make_optimizer(name, lr)
        bar.set_description(f"{name:>8}")
        params, opt_state = params0, tx.init(params0)
        run_epoch = make_epoch(tx).lower(params, opt_state, keys[0]).compile()
        losses = [float(evaluate(params)[0])]
        seconds = 0.0
        for epoch in range(epochs):
            start = time.perf_counter()
            params, opt_state = jax.block_until_ready(run_epoch(params, opt_state, keys[epoch]))
            seconds += time.perf_counter() - start
            loss, val_accuracy = evaluate(params)
            losses.append(float(loss))
            bar.update()
        results.append(Result(name, lr, np.array(losses), float(val_accuracy), seconds))
    bar.close()
    return results, steps


def epochs_to_target(r: Result, target: float) -> int | None:
    """The first epoch after which the training loss is <= ``target`` (None: never)."""
    hit = np.nonzero(r.train_loss <= target)[0]
    return int(hit[0]) if hit.size else None


def stars(results: list[Result], target: float) -> dict[str, tuple[str, str]]:
    """Speed and quality stars derived from the measurements (rule in the module docstring)."""
    reached = [e for r in results if (e := epochs_to_target(r, target)) is not None]
    fastest = min(reached) if reached else None
    best_acc = max(r.val_accuracy for r in results)
    out = {}
    for r in results:
        e = epochs_to_target(r, target)
        if e is None or fastest is None:
            speed = "*"
        else:
            speed = "***" if e <= 2 * fastest else "**" if e <= 4 * fastest else "*"
        gap = 100 * (best_acc - r.val_accuracy)  # percentage points
        quality = "***" if gap <= 1 else "**" if gap <= 3 else "*"
        out[r.name] = (speed, quality)
    return out


def table(results: list[Result], target: float, steps_per_epoch: int) -> str:
    """The comparison as a markdown table."""
    epochs = len(results[0].train_loss) - 1
    st = stars(results, target)
    lines = [
        f"| optimizer | accel_jax call | steps to loss {target:g} "
        "| final train loss | val. accuracy | time (s) | speed | quality | seeds' table |",
        "|---|---|---:|---:|---:|---:|:---:|:---:|:---:|",
    ]
    for r in results:
        e = epochs_to_target(r, target)
        reached = f"{e * steps_per_epoch}" if e is not None else f"> {epochs * steps_per_epoch}"
        speed, quality = st[r.name]
        seeds = " / ".join(SEEDS_STARS[r.name])
        lines.append(
            f"| {r.name} | `{describe_call(r.name, r.learning_rate)}` | {reached} "
            f"| {r.train_loss[-1]:.2e} | {100 * r.val_accuracy:.1f}% | {r.seconds:.2f} "
            f"| {speed} | {quality} | {seeds} |"
        )
    return "\n".join(lines)


def plot(results: list[Result], target: float, steps_per_epoch: int, path: str) -> None:
    """Training loss against steps, one line per optimizer, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = {"SGD": "-", "Momentum": "-", "Nesterov": "-", "AdaGrad": "-.", "RMSProp": "-."}
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        steps = np.arange(len(r.train_loss)) * steps_per_epoch
        ax.plot(steps, r.train_loss, family.get(r.name, "--"), label=r.name, lw=1.6)
    ax.axhline(target, color="gray", lw=0.8, ls=":", label=f"target {target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step (minibatch of the same size for all)")
    ax.set_ylabel("training loss (full training set)")
    ax.set_title("scikit-learn digits: same MLP, init, minibatches and budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=2, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def range_test_rates(names: list[str], batch_size: int, seed: int, num_steps: int) -> dict:
    """The learning rate :func:`accel_jax.find_learning_rate` suggests for each optimizer.

    The range test runs on the same model, init and training minibatches as the
    comparison, with the rate growing exponentially from 1e-5 to 10.
    """
    from flax import nnx

    data = _common.load_digits(seed=seed)
    model = _common.make_nnx_mlp(seed)
    graphdef, params0 = nnx.graphdef(model), nnx.state(model, nnx.Param)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    rng = np.random.default_rng(seed)
    batches = [rng.integers(0, x.shape[0], batch_size) for _ in range(num_steps)]

    def loss_fn(params, idx):
        return _common.cross_entropy(nnx.merge(graphdef, params)(x[idx]), y[idx])

    return {
        name: aj.find_learning_rate(
            loss_fn, params0, lambda lr, name=name: make_optimizer(name, lr), batches,
            min_lr=1e-5, max_lr=10.0, num_steps=num_steps,
        ).suggested_lr
        for name in names
    }


def _learning_rates(overrides: list[str]) -> dict[str, float]:
    rates = {name: lr for name, (_, _, lr) in OPTIMIZERS.items()}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in rates or not value:
            raise SystemExit(f"--lr expects NAME=VALUE with NAME in {list(rates)}, got {item!r}")
        rates[name] = float(value)
    return rates


def main(argv: list[str] | None = None) -> list[Result]:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--target", type=float, default=0.05, help="training loss to reach")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS),
        help="run these optimizers only",
    )
    p.add_argument(
        "--lr", nargs="+", default=[], metavar="NAME=VALUE",
        help="learning rates other than Keras' defaults, e.g. --lr AdaGrad=0.01 SGD=0.1",
    )
    p.add_argument(
        "--lr-range-test", action="store_true",
        help="train each optimizer at the rate the learning-rate range test suggests",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 100)
    rates = _learning_rates(args.lr)
    if args.lr_range_test:
        rates.update(range_test_rates(args.only, args.batch_size, args.seed,
                                      num_steps=20 if args.quick else 300))

    runs = {name: rates[name] for name in args.only}
    results, steps = train_all(runs, epochs, args.batch_size, args.seed, not args.no_progress)
    header = (
        f"scikit-learn digits, MLP 64-64-64-10 (Flax NNX), batch {args.batch_size}, "
        f"{epochs} epochs = {epochs * steps} steps, seed {args.seed}; "
        f"JAX {jax.__version__} on {jax.devices()[0].device_kind}. Every optimizer is "
        '`accel_jax.<call>` with `convention="keras"`, at '
        + ("the rate the learning-rate range test suggests (`find_learning_rate`)."
           if args.lr_range_test else "Keras' default learning rate.")
    )
    md = f"{header}\n\n{table(results, args.target, steps)}\n"
    print(md)
    out = _common.out_dir(args.out)
    md_path = os.path.join(out, "comparison.md")
    png_path = os.path.join(out, "compare_optimizers.png")
    with open(md_path, "w") as f:
        f.write(md)
    plot(results, args.target, steps, png_path)
    print(f"wrote {md_path} and {png_path}")
    return results


if __name__ == "__main__":
    main()
