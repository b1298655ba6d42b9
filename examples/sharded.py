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

The optimizer state's sharding is given explicitly (``out_shardings`` of the jitted
``tx.init``): a zero-filled moment does not depend on the params' values, so XLA has
nothing to propagate a sharding from and would put it on one device.
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


def like_params(abstract_state, params, param_value, default):
    """A tree shaped like the optimizer state: ``param_value`` of the param each leaf
    belongs to (same path suffix, same shape, e.g. ``[0].mu['layer_0']['w']`` belongs to
    ``['layer_0']['w']``), and ``default`` for the other leaves (step counts, rates)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    by_path = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    values = jax.tree_util.tree_flatten_with_path(param_value)[0]
    value_by_path = {jax.tree_util.keystr(path): v for path, v in values}

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for p_path, p_leaf in by_path.items():
            if key.endswith(p_path) and tuple(leaf.shape) == tuple(p_leaf.shape):
                return value_by_path[p_path]
        return default

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def zero1_spec(leaf, n: int) -> P:
    """ZeRO-1: split a state leaf along its first axis over ``data`` when it divides evenly."""
    return P("data") if leaf.ndim >= 1 and leaf.shape[0] % n == 0 else P()


def train(params, data, steps, mesh, param_specs, state_specs, batch_spec):
    """Trains under ``jit`` with the given layout; returns params, losses, state bytes/device."""
    tx = make_optimizer()
    named = lambda specs: jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    p_sh, s_sh = named(param_specs), named(state_specs)
    b_sh, replicated = NamedSharding(mesh, batch_spec), NamedSharding(mesh, P())

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_common.mlp_loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    step = jax.jit(
        step, in_shardings=(p_sh, s_sh, b_sh, b_sh), out_shardings=(p_sh, s_sh, replicated)
    )
    params = jax.device_put(params, p_sh)
    opt_state = jax.jit(tx.init, out_shardings=s_sh)(params)
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
    abstract_state = jax.eval_shape(make_optimizer().init, params0)
    single, single_losses, single_bytes = train_single(params0, data, steps)

    # Data + model parallel: state leaves split like their params.
    model = 2 if n % 2 == 0 else 1
    mesh = Mesh(np.array(devices).reshape(n // model, model), ("data", "model"))
    state_specs = like_params(abstract_state, params0, MODEL_PARALLEL_SPECS, P())
    mp_params, mp_state, mp_losses, mp_bytes = train(
        params0, data, steps, mesh, MODEL_PARALLEL_SPECS, state_specs, P("data")
    )

    # ZeRO-1: params replicated, state split over the data axis.
    mesh = Mesh(np.array(devices), ("data",))
    replicated = jax.tree.map(lambda _: P(), params0)
    zero_specs = jax.tree.map(lambda leaf: zero1_spec(leaf, n), abstract_state)
    z_params, z_state, z_losses, z_bytes = train(
        params0, data, steps, mesh, replicated, zero_specs, P("data")
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
