"""Optimizer state per device, "follow" vs ZeRO-1, and step times on a simulated mesh.

Run from the repository root::

    python benchmarks/sharding.py            # about 3 minutes on 2 cores
    python benchmarks/sharding.py --quick    # tiny sizes: checks that it runs

Measured (8 simulated CPU devices, one ``data`` axis, params replicated):

* optimizer-state bytes per device for GPT-2-small shapes (124M values, 148 leaves)
  with AdamW, 8-bit AdamW and Adafactor, in "follow" (state like the replicated
  params: whole on every device) and "zero1" layouts: from the derived shardings
  (``sharding.shard_shape``) and, independently, from XLA's memory analysis of the
  compiled, sharded ``init`` (nothing is allocated);
* the step time (AdamW ``update`` + ``apply_updates``, jitted, donated) of both
  layouts on a reduced GPT-2 (``--layers``, ``--vocab``) that fits 8 replicas in RAM.
  The 8 "devices" share the host's cores: this measures what the collectives and the
  smaller per-device update cost on CPU, not what a real accelerator mesh does;
* the step time of ``examples/multi_process.py``'s data-parallel runs: 2 processes x
  4 devices (jax.distributed, gloo over TCP) and 1 process x 8 devices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import accel_jax as aj  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpt2_shapes(layers: int = 12, vocab: int = 50257, d: int = 768, ctx: int = 1024) -> dict:
    """GPT-2's parameter shapes (GPT-2 small by default: 124M values, 148 leaves)."""
    shapes = {"wte": (vocab, d), "wpe": (ctx, d), "ln_f": {"scale": (d,), "bias": (d,)}}
    for i in range(layers):
        shapes[f"h{i}"] = {
            "ln_1": {"scale": (d,), "bias": (d,)}, "ln_2": {"scale": (d,), "bias": (d,)},
            "attn": {"c_attn": {"w": (d, 3 * d), "b": (3 * d,)},
                     "c_proj": {"w": (d, d), "b": (d,)}},
            "mlp": {"c_fc": {"w": (d, 4 * d), "b": (4 * d,)},
                    "c_proj": {"w": (4 * d, d), "b": (d,)}},
        }
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


OPTIMIZERS = {
    "adamw": lambda: aj.adamw(1e-3, weight_decay=0.1),
    "adamw 8-bit": lambda: aj.adamw(1e-3, weight_decay=0.1, state_bits=8),
    "adafactor": lambda: aj.adafactor(1e-3),
}


def state_bytes_per_device(shapes, mesh) -> list[dict]:
    rows = []
    for name, make in OPTIMIZERS.items():
        tx = make()
        abstract = jax.eval_shape(tx.init, shapes)
        total = aj.state_bytes(abstract)
        row = {"optimizer": name, "total": total}
        for mode in ("follow", "zero1"):
            sh = aj.state_shardings(tx, shapes, NamedSharding(mesh, P()), mode=mode)
            derived = sum(
                int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(sh), strict=True)
            )
            stats = jax.jit(tx.init, out_shardings=sh).lower(shapes).compile().memory_analysis()
            row[mode] = derived
            row[f"{mode} (XLA)"] = stats.output_size_in_bytes + stats.temp_size_in_bytes
        rows.append(row)
    return rows


def step_times(shapes, mesh, repeats: int) -> dict:
    tx = aj.adamw(1e-3, weight_decay=0.1)
    replicated = NamedSharding(mesh, P())
    p_sh = jax.tree.map(lambda _: replicated, shapes)
    out = {}
    for mode in ("follow", "zero1"):
        s_sh = aj.state_shardings(tx, shapes, p_sh, mode=mode)
        params = jax.jit(lambda: jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype),
                                              shapes), out_shardings=p_sh)()
        grads = jax.jit(lambda: jax.tree.map(lambda s: jnp.full(s.shape, 1e-3, s.dtype),
                                             shapes), out_shardings=p_sh)()
        state = aj.sharded_init(tx, params, mode=mode)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return aj.apply_updates(params, updates), state

        step = jax.jit(step, in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh),
                       donate_argnums=(0, 1))
        params, state = step(params, state, grads)  # compile and warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            params, state = step(params, state, grads)
            jax.block_until_ready((params, state))
            times.append(time.perf_counter() - t0)
        out[mode] = statistics.median(times)
        del params, state, grads
    return out


def multi_process_times(steps: int) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import multi_process

    with tempfile.TemporaryDirectory() as work:
        runs = multi_process.data_parallel(work, steps)
    return {name: statistics.median(log["step_times"][1:]) for name, (_, log) in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (what the tests run)")
    p.add_argument("--layers", type=int, default=2, help="layers of the timed GPT-2 (2)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary of the timed GPT-2")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--no-multi-process", action="store_true")
    args = p.parse_args(argv)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    n = len(jax.devices())
    if args.quick:
        full = gpt2_shapes(layers=1, vocab=512, d=64, ctx=64)
        timed, repeats, mp_steps = full, 2, 3
    else:
        full = gpt2_shapes()
        timed, repeats, mp_steps = gpt2_shapes(args.layers, args.vocab), args.repeats, 20
    values = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(full))
    print(f"{n} devices ({jax.devices()[0].platform}); GPT-2 shapes: {values:,} values in "
          f"{len(jax.tree.leaves(full))} leaves; params replicated over 'data'")
    print("\n| optimizer | state, total (MB) | follow, per device (MB) | zero1, per device (MB) "
          "| zero1 / follow | XLA's count for the compiled init, follow / zero1 (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = state_bytes_per_device(full, mesh)
    for r in rows:
        print(f"| {r['optimizer']} | {r['total'] / 1e6:.1f} | {r['follow'] / 1e6:.1f} "
              f"| {r['zero1'] / 1e6:.1f} | {r['zero1'] / r['follow']:.3f} "
              f"| {r['follow (XLA)'] / 1e6:.1f} / {r['zero1 (XLA)'] / 1e6:.1f} |")
    timed_values = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(timed))
    times = step_times(timed, mesh, repeats)
    print(f"\nAdamW step on {n} simulated CPU devices ({timed_values:,} values): "
          f"follow {times['follow'] * 1e3:.1f} ms, zero1 {times['zero1'] * 1e3:.1f} ms "
          f"(median of {repeats})")
    result = {"state_bytes": rows, "step_times": times}
    if not args.no_multi_process:
        mp = multi_process_times(mp_steps)
        result["multi_process"] = mp
        print(f"examples/multi_process.py data parallel (MLP, batch 128, {mp_steps} steps): "
              f"2 processes x 4 devices {mp['two_process'] * 1e3:.2f} ms/step, "
              f"1 process x 8 devices {mp['one_process'] * 1e3:.2f} ms/step")
    return result


if __name__ == "__main__":
    main()
