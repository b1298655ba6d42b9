"""NNX step time: ``nnx.Optimizer`` against ``aj.flax.Optimizer``, under three ways to jit.

    python benchmarks/nnx_step.py [--values 16777216] [--repeats 7]

One float32 parameter of ``--values`` values, Adam; each case timed once per round,
round after round (medians). Ways to jit the step ``optimizer.update(model, grads)``:
``nnx.jit`` with ``donate_argnums=(0, 1)``, ``nnx.jit`` without donation, and the
functional pattern: ``nnx.split`` once, then a donated ``jax.jit`` of
merge -> update -> ``nnx.state``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import accel_jax as aj  # noqa: E402
from benchmarks.step_time import nnx_grads, nnx_module  # noqa: E402


def case(cls, tx, mode, values, grads):
    model = nnx_module({"w": jnp.asarray(np.random.default_rng(0).normal(size=values), "f4")})
    opt = cls(model, tx, wrt=nnx.Param)
    if mode.startswith("nnx.jit"):
        donate = (0, 1) if "donate" in mode else ()
        step = nnx.jit(lambda m, o, g: o.update(m, g), donate_argnums=donate)

        def run():
            step(model, opt, grads)
            jax.block_until_ready(opt.opt_state)

        return run
    graphdef, state = nnx.split((model, opt))
    box = [state]

    def functional(state, g):
        m, o = nnx.merge(graphdef, state)
        o.update(m, g)
        return nnx.state((m, o))

    step = jax.jit(functional, donate_argnums=0)

    def run():
        box[0] = step(box[0], grads)
        jax.block_until_ready(box[0])

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--values", type=int, default=16 * 2**20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    grads = nnx_grads({"w": jnp.full((args.values,), 1e-3, jnp.float32)})
    cases = {}
    for cls, tx, name in [(nnx.Optimizer, optax.adam(1e-3), "nnx.Optimizer (optax)"),
                          (aj.flax.Optimizer, aj.adam(1e-3), "aj.flax.Optimizer")]:
        for mode in ("nnx.jit donate", "nnx.jit", "split + jax.jit donate"):
            cases[f"{name}, {mode}"] = case(cls, tx, mode, args.values, grads)
    for run in cases.values():  # warm-up (compiles)
        run()
    times = {k: [] for k in cases}
    for _ in range(args.repeats):
        for k, run in cases.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        print(f"{k:<50} {np.median(v) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
