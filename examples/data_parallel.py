"""Data parallelism with ``jax.pmap``: one replica per device, gradients averaged.

Each device holds a full copy of the params and of the optimizer state and gets
its own slice of every global minibatch; the per-device gradients are averaged
with ``lax.pmean`` before the optimizer sees them, so every replica applies the
same update and the replicas stay identical. The result is checked against the
same training on one device with the whole minibatch.

Without an accelerator, the script asks XLA for 8 simulated CPU devices::

    python examples/data_parallel.py [--quick] [--devices 8]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

if __name__ == "__main__":
    _common.simulate_cpu_devices(8)  # before JAX starts its backends

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import accel_jax as aj  # noqa: E402

PER_DEVICE_BATCH = 16


def make_optimizer() -> aj.GradientTransformation:
    return aj.adamw(1e-3, weight_decay=1e-4)


def train_pmap(params, data, steps: int, n_devices: int, seed: int = 0):
    """Trains with one replica per device; returns the params (of replica 0) and the losses."""
    tx = make_optimizer()
    devices = jax.local_devices()[:n_devices]

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_common.mlp_loss)(params, x, y)
        grads = jax.lax.pmean(grads, axis_name="batch")  # the one collective
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, "batch")

    p_step = jax.pmap(step, axis_name="batch", devices=devices)
    # One copy per device, stacked on a leading axis that pmap maps over.
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_devices, *a.shape)), params)
    opt_state = jax.pmap(tx.init, devices=devices)(params)
    losses = []
    for x, y in _common.random_batches(data, PER_DEVICE_BATCH * n_devices, steps, seed):
        shard = lambda a: a.reshape(n_devices, PER_DEVICE_BATCH, *a.shape[1:])
        params, opt_state, loss = p_step(params, opt_state, shard(x), shard(y))
        losses.append(float(loss[0]))
    replicas_agree = all(
        bool(jnp.all(leaf == leaf[0])) for leaf in jax.tree.leaves(params)
    )
    return jax.tree.map(lambda a: a[0], params), losses, replicas_agree


def train_single(params, data, steps: int, n_devices: int, seed: int = 0):
    """The same training on one device with the whole global minibatch."""
    batches = _common.random_batches(data, PER_DEVICE_BATCH * n_devices, steps, seed)
    params, _, losses = _common.train_single_device(make_optimizer(), params, batches)
    return params, losses


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=None, help="devices to use (default: all)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    args = p.parse_args(argv)
    n = args.devices or jax.local_device_count()
    steps = args.steps or (10 if args.quick else 200)

    data = _common.load_digits()
    params0 = _common.init_mlp(jax.random.key(0))
    dp_params, dp_losses, agree = train_pmap(params0, data, steps, n)
    sd_params, sd_losses = train_single(params0, data, steps, n)
    diff = _common.max_relative_difference(dp_params, sd_params)
    print(f"{n} devices ({jax.devices()[0].platform}), global batch {PER_DEVICE_BATCH * n}, "
          f"{steps} steps of AdamW")
    print(f"loss: {dp_losses[0]:.4f} -> {dp_losses[-1]:.4f} (one device: {sd_losses[-1]:.4f})")
    print(f"replicas identical: {agree}; largest relative difference to one device: {diff:.2e}")
    return {
        "params": dp_params, "single_device_params": sd_params, "losses": dp_losses,
        "single_device_losses": sd_losses, "replicas_agree": agree, "devices": n,
        "max_relative_difference": diff,
    }


if __name__ == "__main__":
    main()
