"""Save and restore params and optimizer state mid-training with orbax-checkpoint.

An accel_jax optimizer state is a pytree of arrays (NamedTuples of step counts,
moments and the hyperparameters in use), so orbax saves it like the params. This
script trains an MLP on scikit-learn's digits with AdamW (weight decay on the
kernels only) and halves the learning rate part-way with ``set_hyperparams``; it
then trains again, stops half-way as if the job had been killed, restores the
latest checkpoint into a freshly built optimizer and carries on. The resumed run
ends bit for bit where the uninterrupted one did, learning rate included.

Hyperparameters live in the state: the restored state keeps the learning rate the
saved run used (here, the halved one), whatever ``tx`` was built with (as torch).
To resume with the new optimizer's values instead (as optax), take them over with
``state = aj.with_hyperparams_of(restored_state, tx.init(params))``. Use orbax (or
another checkpointer that keeps dtypes): a bf16 state saved with ``np.savez``
cannot be read back::

    python examples/checkpointing.py [--quick] [--out DIR]   # checkpoints under DIR/checkpoints
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
    # Decay the kernels, not the biases: the mask leaves MaskedNode placeholders in
    # the state, which checkpoint like any other (empty) node.
    return aj.adamw(2e-3, weight_decay=1e-3, mask=lambda p: jax.tree.map(lambda w: w.ndim > 1, p))


def make_step(tx):
    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_common.mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    return step


def batch(data: _common.Digits, step: int, seed: int = 0):
    """The minibatch of a given step: a function of the step alone, so a resumed run
    sees the same data as an uninterrupted one without saving a data-loader state."""
    idx = np.random.default_rng([seed, step]).choice(len(data.y_train), BATCH, replace=False)
    return data.x_train[idx], data.y_train[idx]


def train(params, opt_state, data, first: int, last: int, lr_drop: int, manager=None):
    """Steps ``first .. last - 1``; halves the learning rate at ``lr_drop``; saves each step
    the manager's policy asks for (``manager.save`` is a no-op on the other steps)."""
    step_fn = make_step(make_optimizer())
    for step in _common.progress(range(first, last), "steps"):
        if step == lr_drop:  # changes a number in the state: no recompilation
            lr = aj.get_hyperparams(opt_state)["learning_rate"]
            opt_state = aj.set_hyperparams(opt_state, learning_rate=lr / 2)
        params, opt_state, _ = step_fn(params, opt_state, *batch(data, step))
        if manager is not None:
            state = {"params": params, "opt_state": opt_state}
            manager.save(step + 1, args=ocp.args.StandardSave(state))
    return params, opt_state


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 400)")
    args = p.parse_args(argv)
    steps = args.steps or (16 if args.quick else 400)
    save_every = max(1, steps // 8)
    crash_at = steps // 2 + save_every // 2  # between two checkpoints: some work is lost
    lr_drop = steps // 4

    data = _common.load_digits()
    params0 = _common.init_mlp(jax.random.key(0))

    # 1. The reference: one uninterrupted run.
    tx = make_optimizer()
    ref_params, ref_state = train(params0, tx.init(params0), data, 0, steps, lr_drop)

    # 2. The same run, checkpointed every `save_every` steps and killed at `crash_at`.
    directory = os.path.abspath(os.path.join(_common.out_dir(args.out), "checkpoints"))
    shutil.rmtree(directory, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=2)
    with ocp.CheckpointManager(directory, options=options) as manager:
        train(params0, tx.init(params0), data, 0, crash_at, lr_drop, manager)
        manager.wait_until_finished()

    # 3. A fresh start, as in a new process: rebuild the optimizer, describe the
    #    state's structure (shapes and dtypes only, nothing computed), restore, resume.
    tx = make_optimizer()
    target = jax.eval_shape(
        lambda: {"params": params0, "opt_state": tx.init(params0)}
    )
    with ocp.CheckpointManager(directory, options=options) as manager:
        resumed_at = manager.latest_step()
        restored = manager.restore(resumed_at, args=ocp.args.StandardRestore(target))
    params, opt_state = train(
        restored["params"], restored["opt_state"], data, resumed_at, steps, lr_drop
    )

    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        (params, opt_state),
        (ref_params, ref_state),
    )
    identical = all(jax.tree.leaves(same))
    lr = float(aj.get_hyperparams(opt_state)["learning_rate"])
    loss = float(_common.mlp_loss(params, data.x_train, data.y_train))
    print(f"{steps} steps; checkpoint every {save_every}; killed at step {crash_at}; "
          f"resumed from the checkpoint of step {resumed_at}")
    print(f"final training loss {loss:.4f}, learning rate {lr:g} (halved at step {lr_drop})")
    print(f"resumed run bit-identical to the uninterrupted one: {identical}")
    return {
        "identical": identical, "params": params, "opt_state": opt_state,
        "reference_params": ref_params, "reference_opt_state": ref_state,
        "resumed_at": resumed_at, "learning_rate": lr,
    }


if __name__ == "__main__":
    main()
