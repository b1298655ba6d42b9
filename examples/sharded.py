"""``jax.jit`` over a device mesh, with params and optimizer state sharded by ``NamedSharding``.

Two layouts of the same training (an MLP on scikit-learn's digits, AdamW):

* **data + model parallel**: a ``(data, model)`` mesh; each minibatch is split over
  ``data``; the hidden layers' weights are split over ``model`` (the first layer by
  columns, the second by rows, as in Megatron-LM); every optimizer moment is split
  exactly like the parameter it belongs to.
* **ZeRO-1**: a one-axis ``data`` mesh; the params are replicated (every device runs
  the whole model on its slice of the batch) but the optimizer state is split over
  the ``data`` axis, so each device stores ``1 / n`` of the moments (Rajbhandari et
  al., "ZeRO", 2020, stage 1).

Both are plain ``jax.jit`` with ``in_shardings`` / ``out_shardings``: XLA inserts the
collectives. Each is checked against the same training on one device. Without an
accelerator, the script asks XLA for 8 simulated CPU devices::

    python examples/sharded.py [--quick]

The optimizer state's layout comes from ``aj.state_shardings(tx, params,
param_shardings, mode="follow" | "zero1")`` (one ``NamedSharding`` per state leaf,
derived from the params' shardings) and ``aj.sharded_init`` creates the state directly
in it: a zero-filled moment does not depend on the params' values, so without
``out_shardings`` XLA would have nothing to propagate a sharding from.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

if __name__ == "__main__":
    _common.simulate_cpu_devices(8)  # before JAX starts its backends

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import accel_jax as aj  # noqa: E402

BATCH = 128

# Megatron-style split of the hidden layers over the "model" axis; the small output
# layer is replicated.
MODEL_PARALLEL_SPECS = {
    "layer_0": {"w": P(None, "model"), "b": P("model")},
    "layer_1": {"w": P("model", None), "b": P()},
    "layer_2": {"w": P(), "b": P()},
}


def make_optimizer() -> aj.GradientTransformation:
    return aj.adamw(1e-3, weight_decay=1e-4)


def train(params, data, steps, mesh, param_specs, mode, batch_spec):
    """Trains under ``jit`` with the given layout (``mode``: how the optimizer state is
    laid out, see :func:`accel_jax.state_shardings`); returns params, state, losses and
    the state's bytes per device."""
    tx = make_optimizer()
    p_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs)
    b_sh, replicated = NamedSharding(mesh, batch_spec), NamedSharding(mesh, P())
    # one NamedSharding per state leaf, derived from the params' (shapes only)
    s_sh = aj.state_shardings(tx, params, p_sh, mode=mode)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_common.mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    step = jax.jit(
        step, in_shardings=(p_sh, s_sh, b_sh, b_sh), out_shardings=(p_sh, s_sh, replicated)
    )
    params = jax.device_put(params, p_sh)
    opt_state = aj.sharded_init(tx, params, mode=mode)  # created in its shards
    losses = []
    for x, y in _common.random_batches(data, BATCH, steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    state_bytes = sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(opt_state))
    return params, opt_state, losses, state_bytes


def train_single(params, data, steps):
    params, opt_state, losses = _common.train_single_device(
        make_optimizer(), params, _common.random_batches(data, BATCH, steps))
    return params, losses, sum(leaf.nbytes for leaf in jax.tree.leaves(opt_state))


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 200)")
    args = p.parse_args(argv)
    steps = args.steps or (10 if args.quick else 200)
    devices = jax.devices()
    n = len(devices)

    data = _common.load_digits()
    params0 = _common.init_mlp(jax.random.key(0))
    single, single_losses, single_bytes = train_single(params0, data, steps)

    # Data + model parallel: state leaves split like their params.
    model = 2 if n % 2 == 0 else 1
    mesh = Mesh(np.array(devices).reshape(n // model, model), ("data", "model"))
    mp_params, mp_state, mp_losses, mp_bytes = train(
        params0, data, steps, mesh, MODEL_PARALLEL_SPECS, "follow", P("data")
    )

    # ZeRO-1: params replicated, state split over the data axis.
    mesh = Mesh(np.array(devices), ("data",))
    replicated = jax.tree.map(lambda _: P(), params0)
    z_params, z_state, z_losses, z_bytes = train(
        params0, data, steps, mesh, replicated, "zero1", P("data")
    )

    report = {
        "data + model parallel": (mp_params, mp_losses, mp_bytes),
        "ZeRO-1": (z_params, z_losses, z_bytes),
    }
    print(f"{n} devices ({devices[0].platform}), batch {BATCH}, {steps} steps of AdamW; "
          f"one device: loss {single_losses[-1]:.4f}, optimizer state {single_bytes} bytes")
    print("| layout | final loss | largest relative difference to one device "
          "| optimizer state per device (bytes) |")
    print("|---|---:|---:|---:|")
    for name, (prm, losses, nbytes) in report.items():
        diff = _common.max_relative_difference(prm, single)
        print(f"| {name} | {losses[-1]:.4f} | {diff:.1e} | {nbytes} |")
    return {
        "single_device_params": single,
        "model_parallel_params": mp_params,
        "model_parallel_state": mp_state,
        "zero1_params": z_params,
        "zero1_state": z_state,
        "single_device_state_bytes": single_bytes,
        "zero1_state_bytes": z_bytes,
        "devices": n,
    }


if __name__ == "__main__":
    main()
