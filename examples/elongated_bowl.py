"""The seeds' elongated bowl: optimizer trajectories on an ill-conditioned quadratic.

``f(w) = 0.5 * (a * w0**2 + b * w1**2)`` with ``b / a = 25``: steep across the valley
(``w1``), nearly flat along it (``w0``). Gradient descent first drops down the steep
side, then crawls along the valley floor; momentum and Nesterov build up speed along
the valley; AdaGrad and RMSProp rescale each coordinate so they head more directly
toward the optimum, but AdaGrad's steps keep shrinking (its accumulator only grows)
and it stops short of the optimum; RMSProp and Adam forget old gradients and get there.

Writes ``OUT/elongated_bowl.png`` (trajectories over the contours) and prints, per
optimizer, the distance to the optimum after the budget and the step at which it
first came within 0.1 of it::

    python examples/elongated_bowl.py [--steps 100] [--out DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import accel_jax as aj  # noqa: E402

CURVATURE = (0.2, 5.0)  # a, b: condition number 25
START = (-9.0, 2.5)

# name -> transformation (optax conventions). The three adaptive methods share one
# learning rate, so what differs between them is the accumulator alone. Plain SGD
# runs near its stability limit (2 / 5 = 0.4 across the valley); the momentum
# variants at 0.05, about 0.5 once the velocity (a sum, 1 / (1 - 0.9)) has built up.
OPTIMIZERS = {
    "SGD": aj.sgd(0.3),
    "Momentum": aj.sgd(0.05, momentum=0.9),
    "NAG": aj.sgd(0.05, momentum=0.9, nesterov=True),
    "AdaGrad": aj.adagrad(0.2),
    "RMSProp": aj.rmsprop(0.2),
    "Adam": aj.adam(0.2),
}


def loss(w: jax.Array) -> jax.Array:
    a, b = CURVATURE
    return 0.5 * (a * w[0] ** 2 + b * w[1] ** 2)


def trajectory(tx: aj.GradientTransformation, steps: int) -> np.ndarray:
    """The ``steps + 1`` points visited from :data:`START`, as a ``(steps + 1, 2)`` array."""

    @jax.jit
    def run(w0):
        def step(carry, _):
            w, state = carry
            updates, state = tx.update(jax.grad(loss)(w), state, w)
            w = aj.apply_updates(w, updates)
            return (w, state), w

        _, ws = jax.lax.scan(step, (w0, tx.init(w0)), length=steps)
        return jnp.concatenate([w0[None], ws])

    return np.asarray(run(jnp.asarray(START, jnp.float32)))


def first_within(path: np.ndarray, radius: float) -> int | None:
    hit = np.nonzero(np.linalg.norm(path, axis=1) <= radius)[0]
    return int(hit[0]) if hit.size else None


def plot(paths: dict[str, np.ndarray], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = CURVATURE
    x = np.linspace(-10, 2.5, 300)
    y = np.linspace(-3.2, 3.2, 200)
    xx, yy = np.meshgrid(x, y)
    zz = 0.5 * (a * xx**2 + b * yy**2)
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.contour(xx, yy, zz, levels=np.geomspace(0.01, zz.max(), 14), colors="0.75", linewidths=0.8)
    for name, pts in paths.items():
        on_top = name == "AdaGrad"  # drawn over RMSProp, whose path starts the same way
        (line,) = ax.plot(
            pts[:, 0], pts[:, 1], "-o", ms=2.5, lw=2.2 if on_top else 1.3,
            zorder=3 if on_top else 2, label=name,
        )
        ax.plot(*pts[-1], "X", ms=9, color=line.get_color(), mec="k", zorder=4)
    stop = paths["AdaGrad"][-1]
    ax.annotate(
        f"AdaGrad after {len(paths['AdaGrad']) - 1} steps:\nits steps have shrunk to "
        f"{np.linalg.norm(paths['AdaGrad'][-1] - paths['AdaGrad'][-2]):.2g}",
        stop, textcoords="offset points", xytext=(-20, -80), fontsize=9,
        arrowprops=dict(arrowstyle="->", color="0.3"),
    )
    ax.plot(*START, "ks", ms=7)
    ax.plot(0, 0, "k*", ms=14)
    ax.annotate("start", START, textcoords="offset points", xytext=(6, 6))
    ax.annotate("optimum", (0, 0), textcoords="offset points", xytext=(8, -14))
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("$w_0$ (flat direction)")
    ax.set_ylabel("$w_1$ (steep direction)")
    steps = len(next(iter(paths.values()))) - 1
    ax.set_title(f"Elongated bowl $f(w) = 0.5\\,(0.2\\,w_0^2 + 5\\,w_1^2)$, {steps} steps each")
    ax.legend(loc="lower right", fontsize=9, title="X: where each ends")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps per optimizer (default 100)")
    args = p.parse_args(argv)
    steps = args.steps or (10 if args.quick else 100)

    paths = {name: trajectory(tx, steps) for name, tx in OPTIMIZERS.items()}
    print(f"| optimizer | distance to optimum after {steps} steps | first step within 0.1 |")
    print("|---|---:|---:|")
    for name, pts in paths.items():
        hit = first_within(pts, 0.1)
        print(f"| {name} | {np.linalg.norm(pts[-1]):.3g} | {hit if hit is not None else '-'} |")
    png = os.path.join(_common.out_dir(args.out), "elongated_bowl.png")
    plot(paths, png)
    print(f"wrote {png}")
    return paths


if __name__ == "__main__":
    main()
