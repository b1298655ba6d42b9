"""Schedule-free AdamW: train at y, evaluate at x, checkpoint y and the state (which holds z).

A schedule-free optimizer (Defazio et al., 2024) keeps three sequences: ``z`` (the
base optimizer's steps, in the optimizer state), ``x`` (their weighted average: the
point to evaluate and ship) and ``y = b1 x + (1 - b1) z`` (where gradients are
taken: the params your training loop holds). ``x`` is not stored; it is computed
from the params and the state::

    eval_params = aj.schedule_free_eval_params(opt_state, params)

This script trains an MLP on scikit-learn's digits with
``aj.schedule_free_adamw`` (a constant rate after a short warmup, no decay
schedule), reports the validation loss at ``y`` and at ``x``, then shows what to
checkpoint: the params ``y`` and the whole optimizer state. A run killed half-way
and restored from such a checkpoint ends bit for bit where the uninterrupted run
does. Saving only the evaluation params ``x`` is *not* enough to resume: the state's
``z`` (and the averaging weights) are lost, and the resumed run drifts away.
(PyTorch's ``schedulefree`` swaps the model to ``x`` with ``optimizer.eval()``
before saving; from ``x`` and the state, ``y = b1 x + (1 - b1) z`` gives the train
point back, up to rounding.)::

    python examples/schedule_free.py [--quick] [--out DIR]   # checkpoints under DIR/sf_checkpoints
"""

from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import accel_jax as aj  # noqa: E402

BATCH = 64


def make_optimizer() -> aj.GradientTransformation:
    return aj.schedule_free_adamw(5e-3, warmup_steps=20, b1=0.9, weight_decay=1e-4)


def batch(data: _common.Digits, step: int):
    """The minibatch of a step: a function of the step alone (a resumed run sees the same)."""
    idx = np.random.default_rng([0, step]).choice(len(data.y_train), BATCH, replace=False)
    return data.x_train[idx], data.y_train[idx]


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x, y):
        grads = jax.grad(_common.mlp_loss)(params, x, y)  # gradients at y, the params
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state

    return step


def train(step, params, opt_state, data, first: int, last: int, manager=None):
    for k in range(first, last):
        params, opt_state = step(params, opt_state, *batch(data, k))
        if manager is not None:  # what to save: the params (y) and the state (z inside)
            manager.save(k + 1, args=ocp.args.StandardSave(
                {"params": params, "opt_state": opt_state}))
    return params, opt_state


def validation_loss(params, data) -> float:
    return float(_common.mlp_loss(params, data.x_val, data.y_val))


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    args = p.parse_args(argv)
    steps = args.steps or (40 if args.quick else 600)
    save_every = max(1, steps // 8)
    crash_at = steps // 2 + save_every // 2

    data = _common.load_digits()
    params0 = _common.init_mlp(jax.random.key(0))
    tx = make_optimizer()
    step = make_step(tx)

    # 1. Train; evaluate at x (the eval params), not at y (the params being trained).
    y, state = train(step, params0, tx.init(params0), data, 0, steps)
    x = aj.schedule_free_eval_params(state, y)
    loss_y, loss_x = validation_loss(y, data), validation_loss(x, data)
    acc_x = float(_common.accuracy(_common.mlp_apply(x, data.x_val), data.y_val))
    print(f"{steps} steps of schedule_free_adamw: validation loss at y {loss_y:.4f}, "
          f"at x (eval params) {loss_x:.4f}; accuracy at x {acc_x:.3f}")

    # 2. Checkpoint y and the state, crash, restore into a fresh optimizer, resume.
    directory = os.path.abspath(os.path.join(_common.out_dir(args.out), "sf_checkpoints"))
    shutil.rmtree(directory, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=2)
    with ocp.CheckpointManager(directory, options=options) as manager:
        train(step, params0, tx.init(params0), data, 0, crash_at, manager)
        manager.wait_until_finished()
    tx = make_optimizer()  # as in a new process
    step = make_step(tx)
    target = jax.eval_shape(lambda: {"params": params0, "opt_state": tx.init(params0)})
    with ocp.CheckpointManager(directory, options=options) as manager:
        resumed_at = manager.latest_step()
        restored = manager.restore(resumed_at, args=ocp.args.StandardRestore(target))
    y2, state2 = train(step, restored["params"], restored["opt_state"], data, resumed_at, steps)
    identical = all(jax.tree.leaves(jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), (y2, state2), (y, state)
    )))

    # 3. The wrong way: keep only x, restart from it with a fresh state.
    x_mid = aj.schedule_free_eval_params(restored["opt_state"], restored["params"])
    y3, state3 = train(step, x_mid, tx.init(x_mid), data, resumed_at, steps)
    drift = _common.max_relative_difference(aj.schedule_free_eval_params(state3, y3), x)

    # 4. From x and the state (a checkpoint written in PyTorch's eval mode), y comes back.
    b1 = state.b1
    y_back = jax.tree.map(lambda xi, zi: b1 * xi + (1 - b1) * zi, x, state.z)
    recovered = _common.max_relative_difference(y_back, y)

    print(f"checkpoint every {save_every}; killed at step {crash_at}; resumed from step "
          f"{resumed_at}: bit-identical to the uninterrupted run: {identical}")
    print(f"resumed from x alone with a fresh state: final x differs by {drift:.2g} "
          f"(relative); y recovered from x and z to {recovered:.1g}")
    return {
        "identical": identical, "loss_y": loss_y, "loss_x": loss_x, "accuracy_x": acc_x,
        "drift_from_x_only": drift, "y_recovered": recovered, "resumed_at": resumed_at,
        "params": y, "eval_params": x, "state": state,
    }


if __name__ == "__main__":
    main()
