"""Per-kernel bandwidth: each native CPU kernel against XLA, torch and the stream rate.

Run from the repository root::

    python benchmarks/kernel_bandwidth.py                 # 32M values, 9 rounds
    python benchmarks/kernel_bandwidth.py --quick         # 1M values, 3 rounds: seconds

For ONE float32 leaf of ``--size`` values and each optimizer (Adam, AdamW, Adam with
bfloat16 moments, 8-bit Adam, SGD with momentum, SGD with Nesterov momentum, RMSProp),
times in interleaved rounds (every entry once per round, the order rotated from round
to round; medians and the interquartile range):

* the in-place stream rate ``a = a + s * b`` (12 bytes per value: read a and b, write
  a), as XLA runs it (jitted, ``a`` donated), as torch runs it (``a.add_(b, alpha=s)``)
  and as NumPy runs it (one thread, in cache-sized chunks so that ``s * b`` never
  reaches memory);
* ``aj.make_step(tx)`` with the native kernel and with ``kernel=False`` (XLA);
* torch.optim's ``fused=True`` and ``foreach=True`` steps where torch has them.

GB/s = the bytes an ideal one-pass step must move per parameter (Adam: read p, g, m, v
and write p, m, v = 28) times the size, divided by the median time; "% stream" is that
rate over the fastest in-place stream rate measured in the same rounds.

torch's OpenMP threads wait passively here (``OMP_WAIT_POLICY=PASSIVE`` unless set):
with libgomp's default they spin on a core for a while after every torch call, and
whatever runs next on this 2-core machine ran up to 1.5x slower (the XLA triad and
the native kernel alike; RESULTS.md, "Per-kernel bandwidth").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import accel_jax as aj  # noqa: E402
from benchmarks.step_time import (  # noqa: E402
    LR,
    Triad,
    choices,
    interleaved,
    machine,
    summarize,
    use_torch,
)

# Ideal bytes per parameter (float32 params and grads): reads + writes of each array.
# 8-bit Adam: 1-byte codes of m and sqrt(v), plus one float32 scale per 256 values each.
IDEAL_BYTES = {"adam": 28, "adamw": 28, "adam_bf16": 20, "adam_8bit": 16 + 16 / 256,
               "sgd_momentum": 20, "sgd_nesterov": 20, "rmsprop": 20}
OPTIMIZERS = tuple(IDEAL_BYTES)
# torch.optim's equivalents: (class, keyword arguments, modes torch 2.13 has on CPU).
TORCH = {
    "adam": ("Adam", {}, ("fused", "foreach")),
    "adamw": ("AdamW", {"weight_decay": 1e-2}, ("fused", "foreach")),
    "sgd_momentum": ("SGD", {"momentum": 0.9}, ("fused", "foreach")),
    "sgd_nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}, ("fused", "foreach")),
    "rmsprop": ("RMSprop", {"alpha": 0.9}, ("foreach",)),  # torch has no fused RMSprop
}
NO_TORCH = {"adam_bf16": "torch has no bf16-moment option for float32 params",
            "adam_8bit": "torch has no 8-bit optimizer state (bitsandbytes: CUDA)"}


def make_tx(opt):
    return {
        "adam": lambda: aj.adam(LR),
        "adamw": lambda: aj.adamw(LR, weight_decay=1e-2),
        "adam_bf16": lambda: aj.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "adam_8bit": lambda: aj.adam(LR, state_bits=8),
        "sgd_momentum": lambda: aj.sgd(LR, momentum=0.9),
        "sgd_nesterov": lambda: aj.sgd(LR, momentum=0.9, nesterov=True),
        "rmsprop": lambda: aj.rmsprop(LR),
    }[opt]()


class Timed:
    """An entry: ``run()`` once (timed or not); ``times`` in seconds."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def run(self, timed=True):
        t0 = time.perf_counter()
        self.fn()
        if timed:
            self.times.append(time.perf_counter() - t0)


def jax_entry(opt, n, kernel):
    """``aj.make_step(tx)`` on one leaf of ``n`` values, jitted and donated."""
    tx = make_tx(opt)
    box = {"p": {"w": jax.random.normal(jax.random.PRNGKey(0), (n,)) * 0.02},
           "g": {"w": jax.random.normal(jax.random.PRNGKey(1), (n,)) * 0.02}}
    box["s"] = tx.init(box["p"])
    step = aj.make_step(tx, kernel=None if kernel else False)
    hlo = step.lower(box["p"], box["s"], box["g"]).as_text()

    def fn():
        box["p"], box["s"] = step(box["p"], box["s"], box["g"])
        jax.block_until_ready((box["p"], box["s"]))

    entry = Timed(fn)
    entry.uses_kernel = "accel_jax_" in hlo
    return entry


def torch_entry(opt, n, mode):
    import torch

    cls, kw, _ = TORCH[opt]
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n) * 0.02)
    p.grad = torch.randn(n) * 0.02
    o = getattr(torch.optim, cls)([p], lr=LR, **kw, **{mode: True})

    def fn():
        with torch.no_grad():
            o.step()

    return Timed(fn)


def torch_stream(n):
    import torch

    a, b = torch.ones(n), torch.full((n,), 2.0)
    return Timed(lambda: a.add_(b, alpha=0.5))


def numpy_stream(n, chunk=1 << 18):
    """``a += 0.5 * b`` on one thread, in chunks of 1 MiB (the product stays in cache)."""
    a, b = np.ones(n, np.float32), np.full(n, 2.0, np.float32)
    tmp = np.empty(chunk, np.float32)

    def fn():
        for i in range(0, n, chunk):
            t = tmp[: min(chunk, n - i)]
            np.multiply(b[i : i + chunk], np.float32(0.5), out=t)
            np.add(a[i : i + chunk], t, out=a[i : i + chunk])

    return Timed(fn)


def bench(opt, n, repeats, have_torch, xla=True):
    """Times one optimizer's entries and the three stream rates in the same rounds."""
    streams = {"stream: XLA a = a + s*b": Triad(n), "stream: numpy (1 thread)": numpy_stream(n)}
    if have_torch:
        streams["stream: torch a.add_(b, alpha=s)"] = torch_stream(n)
    entries = {"accel_jax kernel": jax_entry(opt, n, True)}
    if xla:
        entries["accel_jax xla"] = jax_entry(opt, n, False)
    if have_torch and opt in TORCH:
        for mode in TORCH[opt][2]:
            entries[f"torch {mode}"] = torch_entry(opt, n, mode)
    everything = {**streams, **entries}
    interleaved(list(everything.values()), repeats)
    stream = {k: {**summarize(e.times), "gb_s": 12 * n / summarize(e.times)["median_s"] / 1e9}
              for k, e in streams.items()}
    best = max(s["gb_s"] for s in stream.values())
    rows = []
    for name, e in entries.items():
        r = {"optimizer": opt, "implementation": name, **summarize(e.times),
             "bytes_per_param": IDEAL_BYTES[opt]}
        r["gb_s"] = IDEAL_BYTES[opt] * n / r["median_s"] / 1e9
        r["stream_fraction"] = r["gb_s"] / best
        if hasattr(e, "uses_kernel"):
            r["uses_kernel"] = e.uses_kernel
        rows.append(r)
    ref = next((r for r in rows if r["implementation"] == "torch fused"), None)
    ref = ref or next((r for r in rows if r["implementation"] == "torch foreach"), None)
    for r in rows:
        if ref is not None:
            r["vs_torch"] = r["median_s"] / ref["median_s"]
            r["torch_ref"] = ref["implementation"]
    del streams, entries, everything
    gc.collect()
    return stream, best, rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32 * 1024 * 1024, help="values in the leaf")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    ap.add_argument("--quick", action="store_true", help="1M values, 3 rounds")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-xla", action="store_true",
                    help="without the XLA-path steps (8-bit's allocates 2.25x the params per "
                         "step, which slows the entries after it)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    n = (1 << 20) if args.quick else args.size
    repeats = args.repeats or (3 if args.quick else 9)
    opts = choices(ap, args.optimizers, OPTIMIZERS)
    have_torch = use_torch(
        args.no_torch, "torch is not installed: its rows and its stream rate are skipped")
    info = machine()
    if have_torch:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    info["native"] = aj.native_status()
    info["loadavg"] = os.getloadavg()
    results = {"machine": info, "command": " ".join(["python"] + sys.argv), "size": n,
               "repeats": repeats, "streams": {}, "rows": []}
    print("machine:", json.dumps(info))
    print(f"one float32 leaf of {n:,} values; median of {repeats} interleaved rounds\n")
    lines = ["| optimizer | implementation | median ms | IQR | B/param | GB/s | % stream "
             "| vs torch |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for opt in opts:
        gc.collect()
        stream, best, rows = bench(opt, n, repeats, have_torch, not args.no_xla)
        results["streams"][opt] = stream
        results["rows"] += rows
        for name, s in stream.items():
            print(f"  [{opt}] {name:<34} {s['median_s'] * 1e3:8.2f} ms  IQR {s['iqr_rel']:4.0%}"
                  f"  {s['gb_s']:6.1f} GB/s", flush=True)
        for r in rows:
            vs = f"{r['vs_torch']:.2f} ({r['torch_ref'].split()[1]})" if "vs_torch" in r else "-"
            mark = ""
            if r["implementation"] == "accel_jax kernel" and not r.get("uses_kernel"):
                mark = " (NO KERNEL: XLA path)"
            lines.append(f"| {opt} | {r['implementation']}{mark} "
                         f"| {r['median_s'] * 1e3:.2f} | {r['iqr_rel']:.0%} "
                         f"| {r['bytes_per_param']:g} | {r['gb_s']:.1f} "
                         f"| {r['stream_fraction']:.0%} | {vs} |")
            print(lines[-1], flush=True)
        if opt in NO_TORCH and have_torch:
            print(f"  ({opt}: {NO_TORCH[opt]})")
        if opt == "rmsprop" and have_torch:
            print("  (rmsprop: torch 2.13 has no fused RMSprop; foreach is the reference)")
    info["loadavg_after"] = os.getloadavg()
    print("\n" + "\n".join(lines))
    print(f"\n% stream: against the fastest in-place stream rate of the same rounds; load "
          f"average before {info['loadavg'][0]:.2f}, after {info['loadavg_after'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
