"""Compile time, compile memory and the optimizer's share of a train step (step_time.py).

Used by ``benchmarks/step_time.py`` (``--compile-leaves``, ``--train-share``); each
compile can run in a child process, whose peak resident memory is then the
compile's (``resource.getrusage``), so one measurement does not inherit another's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import accel_jax as aj  # noqa: E402
from benchmarks.step_time import (  # noqa: E402
    interleaved,
    jax_optimizer,
    jax_step,
    make_tree,
    summarize,
)


def compile_time(impl, leaves, size, train_step=False):
    """Seconds to trace, lower and compile the jitted Adam step; for a whole train step,
    ``(seconds, median run time of the compiled step)``.

    ``train_step=True`` compiles loss, gradient and optimizer step together, with
    a small loss that touches every leaf: for flat params the model reads the
    leaves back with ``layout.unflatten``, whose slices XLA compiles too.
    """
    shapes = [(size,)] * leaves
    params = make_tree(shapes, 0)
    grads = params
    lib = "optax" if impl == "optax" else "accel_jax"
    tx = jax_optimizer(lib, "adam")
    if "packed" in impl:
        tx = aj.pack_state(tx)
    layout = None
    if impl == "accel_jax flat":
        params, layout = aj.flatten_params(params)
        grads = params
    state = tx.init(params)
    if train_step:
        def loss(p):
            tree = layout.unflatten(p) if layout is not None else p
            return sum(jnp.sum(jnp.tanh(x) * 0.5) for x in jax.tree.leaves(tree))

        def step(params, state, x):
            del x
            g = jax.grad(loss)(params)
            updates, state = tx.update(g, state, params)
            return optax.apply_updates(params, updates), state

        fn = jax.jit(step, donate_argnums=(0, 1))
    else:
        fn = jax_step(tx) if lib == "optax" else aj.make_step(
            tx, kernel=False if impl.endswith(" xla") else None)
    jax.block_until_ready((params, state))
    global _BEFORE_COMPILE_MB
    _BEFORE_COMPILE_MB = _rss_mb()  # params, state and the runtime already in memory
    t0 = time.perf_counter()
    compiled = fn.lower(params, state, grads).compile()
    seconds = time.perf_counter() - t0
    if not train_step:
        return seconds
    # The train step's run time too: the backward pass through ``unflatten`` is where
    # a flat layout can cost (it once summed one padded buffer per leaf).
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        params, state = compiled(params, state, grads)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    return seconds, summarize(times[1:])["median_s"]


# ----------------------------------------------------------------------------- main


def flat_times(leaves: int) -> dict:
    """Seconds of eager ``flatten_params`` and of the first eager ``layout.unflatten``."""
    params = {f"p{i:05d}": jnp.full((32, 32), i, jnp.float32) for i in range(leaves)}
    t0 = time.perf_counter()
    flat, layout = aj.flatten_params(params)
    jax.block_until_ready(flat)
    t1 = time.perf_counter()
    jax.block_until_ready(layout.unflatten(flat))
    return {"leaves": leaves, "flatten_s": t1 - t0, "unflatten_s": time.perf_counter() - t1}


def compile_in_child(impl: str, leaves: int, size: int) -> dict:
    """:func:`compile_time` in a fresh process: seconds, and the peak RSS the compile added
    (MB) over the memory in use when it began (the runtime, params and state)."""
    code = (
        "import json; from benchmarks import compile_time as c;"
        f"s = c.compile_time({impl!r}, {leaves}, {size});"
        "print(json.dumps({'seconds': s, 'rss_mb': c._peak_rss_mb() - c._BEFORE_COMPILE_MB}))"
    )
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=root, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_BEFORE_COMPILE_MB = 0.0  # resident memory when compile_time's last compile began


def _rss_mb() -> float:
    """Resident memory now (MB), from /proc (Linux): the baseline of the peak below."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class TrainStep:
    """A whole jitted train step (loss, gradient, optimizer step) over ``leaves`` leaves.

    ``none``: no optimizer (the gradients become the params: same buffers in and out,
    no optimizer arithmetic), the baseline whose time is subtracted to give the
    optimizer's share; ``optax``; ``accel_jax`` (``apply_step``, the kernel on CPU);
    ``accel_jax packed`` (the same on :func:`accel_jax.pack_state`).
    """

    def __init__(self, impl: str, leaves: int, size: int):
        self.params = make_tree([(size,)] * leaves, 0)
        tx = jax_optimizer("optax" if impl == "optax" else "accel_jax", "adam")
        tx = aj.pack_state(tx) if "packed" in impl else tx
        self.state = None if impl == "none" else tx.init(self.params)

        def loss(p, x):
            return sum(jnp.sum(jnp.tanh(v * x)) for v in jax.tree.leaves(p))

        def step(params, state, x):
            g = jax.grad(loss)(params, x)
            if impl == "none":
                return g, state
            if impl == "optax":
                updates, state = tx.update(g, state, params)
                return optax.apply_updates(params, updates), state
            return aj.apply_step(tx, params, state, g)

        self.x = jnp.float32(0.5)
        t0 = time.perf_counter()
        self.step = jax.jit(step, donate_argnums=(0, 1)).lower(
            self.params, self.state, self.x).compile()
        self.compile_s = time.perf_counter() - t0
        self.times = []

    def run(self, timed=True):
        t0 = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, self.x)
        jax.block_until_ready((self.params, self.state))
        if timed:
            self.times.append(time.perf_counter() - t0)


def train_share(leaves: int, size: int, repeats: int, extra: dict | None = None) -> dict:
    """Median train-step times, interleaved, and each optimizer's share (minus ``none``).

    ``extra``: more cases timed in the same rounds (``{name: case}``, e.g. torch's fused
    Adam step on the same shapes), reported as they are.
    """
    impls = ["none", "optax", "accel_jax", "accel_jax packed"]
    cases = {i: TrainStep(i, leaves, size) for i in impls}
    interleaved([*cases.values(), *(extra or {}).values()], repeats)
    out = {i: {**summarize(c.times), "compile_s": c.compile_s} for i, c in cases.items()}
    for i in impls[1:]:
        out[i]["share_s"] = out[i]["median_s"] - out["none"]["median_s"]
    out.update({name: summarize(c.times) for name, c in (extra or {}).items()})
    return out
