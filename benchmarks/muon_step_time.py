"""Muon against AdamW: step time per matrix size, state bytes, sharding collectives, training.

Run from the repository root (``pip install -e ".[test]"``; scikit-learn for ``--train``)::

    python benchmarks/muon_step_time.py                  # all sections (CPU: ~5 minutes)
    python benchmarks/muon_step_time.py --quick          # tiny sizes: checks that it runs

* Step time: one jitted, donated step (``aj.make_step``) of ``aj.muon``,
  ``optax.contrib.muon`` and ``aj.adamw`` on one float32 ``(m, n)`` matrix plus an
  ``n``-vector bias, timed in interleaved rounds (every optimizer once per round, in a
  rotating order) after warm-up; medians and interquartile ranges over the rounds.
  Muon's Newton–Schulz costs ``ns_steps * 2 (2 m^2 n + m^3)`` flops (``m <= n``), so
  it is compute bound where AdamW is memory bound: the ratio grows with the size.
* State bytes: ``aj.state_bytes`` of each optimizer's state on the same tree.
* Sharding (``--sharding``, a subprocess with 8 simulated CPU devices): the
  collectives XLA inserts into the compiled step for a matrix sharded by rows, by
  columns and both, and the largest difference from the one-device result.
* Training (``--train``): a 64-128-10 tanh MLP on scikit-learn's digits, full batch,
  300 steps; Muon (matrices) + AdamW (biases) against AdamW, each at its best of three
  learning rates; final train loss and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def _optimizers():
    import optax

    import accel_jax as aj

    return {
        "aj.muon": lambda: aj.muon(0.02),
        "optax.contrib.muon": lambda: optax.contrib.muon(0.02),
        "aj.adamw": lambda: aj.adamw(1e-3, weight_decay=0.0),
    }


def step_times(sizes, rounds: int, warmup: int = 2) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import accel_jax as aj

    rows = []
    for m, n in sizes:
        key = jax.random.PRNGKey(0)
        params = {"w": jax.random.normal(key, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
        grads = jax.tree.map(lambda x: jnp.cos(x) * 1e-2, params)
        runs = {}
        for name, make in _optimizers().items():
            tx = make()
            step = aj.make_step(tx)
            p = jax.tree.map(jnp.copy, params)
            runs[name] = {"step": step, "p": p, "s": tx.init(p), "t": [],
                          "bytes": aj.state_bytes(tx.init(params))}
        names = list(runs)
        for r in range(warmup + rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                run = runs[name]
                t0 = time.perf_counter()
                run["p"], run["s"] = run["step"](run["p"], run["s"], grads)
                jax.block_until_ready(run["p"])
                if r >= warmup:
                    run["t"].append(time.perf_counter() - t0)
        base = float(np.median(runs["aj.adamw"]["t"]))
        for name, run in runs.items():
            t = np.asarray(run["t"])
            med = float(np.median(t))
            iqr = float(np.percentile(t, 75) - np.percentile(t, 25))
            rows.append({"shape": [m, n], "optimizer": name, "median_ms": 1e3 * med,
                         "iqr_rel": iqr / med, "ratio_to_adamw": med / base,
                         "state_bytes": run["bytes"]})
            print(f"{m}x{n:<6} {name:20s} {1e3 * med:9.2f} ms (IQR {100 * iqr / med:4.0f}%)"
                  f"  {med / base:6.2f}x AdamW  state {run['bytes'] / 2**20:7.2f} MiB",
                  flush=True)
    return rows


SHARDING_CODE = r"""
import os, re, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import accel_jax as aj
m, n = {m}, {n}
mesh = Mesh(np.array(jax.devices()).reshape(8), ("x",))
mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
w = jax.random.normal(jax.random.PRNGKey(0), (m, n), jnp.float64)
g = jnp.cos(w)
tx = aj.muon(0.02)
one, _ = jax.jit(tx.update)({{"w": g}}, tx.init({{"w": w}}), {{"w": w}})
out = {{}}
for label, sh in (("rows", NamedSharding(mesh, P("x", None))),
                  ("columns", NamedSharding(mesh, P(None, "x"))),
                  ("rows x columns (2x4)", NamedSharding(mesh2, P("a", "b")))):
    ws, gs = jax.device_put(w, sh), jax.device_put(g, sh)
    update = jax.jit(tx.update)
    state = tx.init({{"w": ws}})
    u, _ = update({{"w": gs}}, state, {{"w": ws}})
    hlo = update.lower({{"w": gs}}, state, {{"w": ws}}).compile().as_text()
    counts = {{op: len(re.findall(r"= \S+ " + op + r"\(", hlo)) + len(re.findall(
        r" " + op + r"-start\(", hlo)) for op in ("all-reduce", "all-gather", "reduce-scatter",
        "all-to-all", "collective-permute")}}
    out[label] = {{"collectives": {{k: v for k, v in counts.items() if v}},
                   "max_abs_diff": float(jnp.max(jnp.abs(u["w"] - one["w"])))}}
print(json.dumps(out))
"""


def sharding(m: int, n: int) -> dict:
    code = SHARDING_CODE.format(m=m, n=n)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for label, d in out.items():
        print(f"sharded by {label:22s} collectives {d['collectives']}  "
              f"max |sharded - one device| {d['max_abs_diff']:.1e}", flush=True)
    return out


def train(steps: int, quick: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    from sklearn.datasets import load_digits

    import accel_jax as aj

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    tr, te = order[:1400], order[1400:]
    xtr, ytr, xte, yte = (jnp.asarray(a) for a in (x[tr], y[tr], x[te], y[te]))
    params = {"w0": jnp.asarray(rng.normal(size=(64, 128)) / 8, jnp.float32),
              "b0": jnp.zeros(128), "w1": jnp.asarray(rng.normal(size=(128, 10)) / 11,
                                                      jnp.float32), "b1": jnp.zeros(10)}

    def logits(p, a):
        return jnp.tanh(a @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"]

    def loss(p):
        lg = logits(p, xtr)
        return -jnp.mean(jax.nn.log_softmax(lg)[jnp.arange(len(ytr)), ytr])

    configs = {
        "muon": [(lr, lambda lr: aj.muon(lr, adam_learning_rate=3e-3))
                 for lr in (0.01, 0.02, 0.05)],
        "adamw": [(lr, lambda lr: aj.adamw(lr, weight_decay=0.0)) for lr in (1e-3, 3e-3, 1e-2)],
    }
    results = {}
    for name, cands in configs.items():
        cands = cands[:1] if quick else cands
        best = None
        for lr, make in cands:
            tx = make(lr)
            step = aj.make_step(tx)
            p = jax.tree.map(jnp.copy, params)
            s = tx.init(p)
            grad = jax.jit(jax.value_and_grad(loss))
            for _ in range(steps):
                _, g = grad(p)
                p, s = step(p, s, g)
            final = float(loss(p))
            acc = float(jnp.mean(jnp.argmax(logits(p, xte), -1) == yte))
            if best is None or final < best["train_loss"]:
                best = {"lr": lr, "train_loss": final, "test_accuracy": acc}
        results[name] = best
        print(f"{name:6s} best lr {best['lr']:<6g} train loss {best['train_loss']:.4f} "
              f"test accuracy {best['test_accuracy']:.3f} ({steps} full-batch steps)",
              flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [(32, 64)] if args.quick else [(256, 256), (512, 512), (1024, 1024), (512, 2048)]
    out = {"step_time": step_times(sizes, 3 if args.quick else args.rounds)}
    out["sharding"] = sharding(16, 64) if args.quick else sharding(512, 2048)
    out["train"] = train(20 if args.quick else 300, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
