"""Optimizer step time, bandwidth, compile time and state size: accel_jax against optax.

Run from the repository root (``pip install -e ".[test]"`` first)::

    python benchmarks/step_time.py                # full run (CPU: about 15 minutes)
    python benchmarks/step_time.py --quick        # tiny sizes: checks that it runs

Everything is measured in one process, so the ratios compare like with like:

* one full optimizer step (``update`` + ``apply_updates`` under ``jax.jit`` with
  donated params and state) for Adam, AdamW, SGD with Nesterov momentum and
  RMSProp, on three float32 trees: (A) one leaf of 64M values, (B) GPT-2-small
  shapes (124M values, 148 leaves), (C) 2,000 leaves of 1,024 values; for optax,
  accel_jax on the params tree, accel_jax on flat params
  (:func:`accel_jax.flatten_params`), accel_jax's 8-bit Adam, and torch.optim
  (for-loop, foreach, fused) when torch is installed;
* effective bandwidth (the bytes an ideal implementation must move divided by
  the step time) against a triad ``a = b + s * c`` of the same size, jitted the
  same way, in the same run;
* the dispatch floor: a jitted, donated step over the same buffers as Adam's
  that does no optimizer arithmetic (what jit costs per buffer, whoever computes);
* compile time (trace, lower and compile) of the jitted Adam step for 100, 1,000
  and 10,000 leaves;
* optimizer-state bytes;
* training quality of the state formats (float32, bf16 moments, 8-bit) on
  scikit-learn's digits (``benchmarks/quality.py``).

Times are medians over ``--repeats`` steps after warm-up; the spread (the
interquartile range relative to the median) is printed next to each.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import accel_jax as aj  # noqa: E402

LR = 1e-3
OPTIMIZERS = ("adam", "adamw", "sgd_nesterov", "rmsprop")
# Bytes per float32 parameter an ideal step must move: reads + writes of
# params, grads and each state array.
IDEAL_BYTES = {"adam": 28, "adamw": 28, "sgd_nesterov": 20, "rmsprop": 20}
# Timed together, round after round (8-bit: Adam and AdamW only).
IMPLS = ("optax", "accel_jax xla", "accel_jax", "accel_jax flat", "accel_jax packed",
         "accel_jax packed xla", "flax TrainState", "aj.flax.TrainState", "nnx.Optimizer",
         "aj.flax.Optimizer", "accel_jax 8-bit")


# ----------------------------------------------------------------------------- trees


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 small (124M values, 148 leaves)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,)]  # ln_1 scale, bias
        shapes += [(d, 3 * d), (3 * d,), (d, d), (d,)]  # attn c_attn, c_proj
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # mlp c_fc, c_proj
    shapes += [(d,), (d,)]  # ln_f
    return shapes


def tree_shapes(name: str, quick: bool) -> list[tuple[int, ...]]:
    if quick:
        return {"A": [(1 << 16,)], "B": [(64, 32), (32,), (32, 96)] * 4, "C": [(64,)] * 50}[name]
    return {
        "A": [(64 * 1024 * 1024,)],
        "B": gpt2_small_shapes(),
        "C": [(1024,)] * 2000,
    }[name]


def make_tree(shapes, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return {f"p{i:05d}": jax.random.normal(k, s, jnp.float32) * 0.02 for i, (k, s) in
            enumerate(zip(keys, shapes, strict=True))}


# ------------------------------------------------------------------------ optimizers


def jax_optimizer(lib: str, name: str):
    m = optax if lib == "optax" else aj
    if name == "adam":
        return m.adam(LR)
    if name == "adamw":
        return m.adamw(LR, weight_decay=1e-2)
    if name == "sgd_nesterov":
        return m.sgd(LR, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return m.rmsprop(LR)
    raise ValueError(name)


def torch_optimizer(name, params, mode):
    import torch

    kw = {"foreach": False} if mode == "for-loop" else {mode: True}
    if name == "adam":
        return torch.optim.Adam(params, lr=LR, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LR, weight_decay=1e-2, **kw)
    if name == "sgd_nesterov":
        return torch.optim.SGD(params, lr=LR, momentum=0.9, nesterov=True, **kw)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=LR, alpha=0.9, **kw)
    raise ValueError(name)


# --------------------------------------------------------------------------- timing


def choices(ap, text: str, allowed, what: str = "optimizer") -> list[str]:
    """The comma-separated names of ``text``; an argparse error for one not in ``allowed``."""
    chosen = [x for x in text.split(",") if x]
    for x in chosen:
        if x not in allowed:
            ap.error(f"unknown {what} {x!r}; choose from {tuple(allowed)}")
    return chosen


def use_torch(disabled: bool, missing: str | None = None) -> bool:
    """Whether torch is installed and wanted (its threads then use every core)."""
    if disabled:
        return False
    try:
        import torch
    except ImportError:
        if missing:
            print(missing)
        return False
    torch.set_num_threads(os.cpu_count() or 1)
    return True


def summarize(times) -> dict:
    t = np.asarray(times)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "min_s": float(t.min()), "iqr_rel": float((q3 - q1) / med)}


def jax_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def eight_bit(opt):
    """8-bit block-wise state of Adam or AdamW (the others have none)."""
    if opt == "adamw":
        return aj.adamw(LR, weight_decay=1e-2, state_bits=8)
    return aj.adam(LR, state_bits=8)


def train_state_step(cls, tx, params):
    """A Flax ``TrainState`` and its jitted, donated ``apply_gradients`` (the user's loop)."""
    ts = cls.create(apply_fn=None, params=params, tx=tx)
    step = jax.jit(lambda ts, _, g: (ts.apply_gradients(grads=g), None), donate_argnums=0)
    return ts, step


def nnx_module(tree):
    """An NNX module whose ``nnx.Param`` attributes are the tree's leaves."""
    from flax import nnx

    class Holder(nnx.Module):
        def __init__(self, tree):
            for k, v in tree.items():
                setattr(self, k, nnx.Param(v))

    return Holder(tree)


def nnx_grads(grads):
    from flax import nnx

    return nnx.state(nnx_module(grads), nnx.Param)


def nnx_optimizer_step(impl, tx, params):
    """``(model, optimizer)`` and a donated ``nnx.jit`` step calling ``optimizer.update``."""
    from flax import nnx

    model = nnx_module(params)
    cls = nnx.Optimizer if impl == "nnx.Optimizer" else aj.flax.Optimizer
    optimizer = cls(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, grads):
        optimizer.update(model, grads)

    return (model, optimizer), step


class JaxCase:
    """One implementation's jitted step with its own params and state.

    ``optax``: optax's ``update`` + ``apply_updates`` in one donated jit (what
    ``nnx.Optimizer`` and ``TrainState`` run); ``accel_jax``: ``aj.make_step`` (the
    native CPU kernel where the optimizer has one); ``accel_jax xla``: the same on
    the XLA path (= accel_jax's tx in the plain loop); ``accel_jax flat``: flat
    params; ``accel_jax packed`` / ``packed xla``: :func:`accel_jax.pack_state` (params
    tree, state one buffer per dtype), kernel / XLA; ``flax TrainState``: Flax's with
    optax's tx; ``aj.flax.TrainState``: the drop-in (kernel); ``accel_jax 8-bit`` /
    ``8-bit xla``: 8-bit state, kernel / XLA.
    """

    def __init__(self, impl, opt, shapes, grads):
        params = make_tree(shapes, 0)
        lib = "optax" if impl in ("optax", "flax TrainState", "nnx.Optimizer") else "accel_jax"
        self.nnx = False
        self.tx = eight_bit(opt) if "8-bit" in impl else jax_optimizer(lib, opt)
        if "packed" in impl:
            self.tx = aj.pack_state(self.tx)
        if impl in ("nnx.Optimizer", "aj.flax.Optimizer"):
            self.params, self.step = nnx_optimizer_step(impl, self.tx, params)
            self.state, self.grads, self.times = None, nnx_grads(grads), []
            self.nnx = True
            return
        if impl in ("flax TrainState", "aj.flax.TrainState"):
            from flax.training import train_state

            cls = train_state.TrainState if impl == "flax TrainState" else aj.flax.TrainState
            self.params, self.step = train_state_step(cls, self.tx, params)
            self.state, self.grads, self.times = None, grads, []
            return
        if impl == "optax":
            self.step = jax_step(self.tx)
        else:
            self.step = aj.make_step(self.tx, kernel=False if impl.endswith(" xla") else None)
        if impl == "accel_jax flat":
            params, layout = aj.flatten_params(params)
            grads = layout.flatten(grads)  # a flat-params model's gradients come out flat
        self.params, self.grads = params, grads
        self.state = self.tx.init(params)
        self.times = []

    def state_bytes(self):
        if self.nnx:
            from flax import nnx

            return aj.state_bytes(nnx.as_pure(self.params[1].opt_state))
        return aj.state_bytes(self.params.opt_state if self.state is None else self.state)

    def temp_bytes(self):
        """XLA's temporary buffers of the compiled step (counted, not timed)."""
        if self.nnx:
            return None
        compiled = self.step.lower(self.params, self.state, self.grads).compile()
        return int(compiled.memory_analysis().temp_size_in_bytes)

    def run(self, timed=True):
        t0 = time.perf_counter()
        if self.nnx:  # updates the model and optimizer in place
            self.step(*self.params, self.grads)
            jax.block_until_ready(jax.tree.leaves(self.params[1].opt_state))
        else:
            self.params, self.state = self.step(self.params, self.state, self.grads)
            jax.block_until_ready((self.params, self.state))
        if timed:
            self.times.append(time.perf_counter() - t0)


class Triad:
    """``a = b + s * c`` over float32 arrays, jitted and donated like the steps."""

    def __init__(self, n):
        self.n = n
        self.b = jnp.ones((n,), jnp.float32)
        self.c = jnp.full((n,), 2.0, jnp.float32)
        self.f = jax.jit(lambda b, c: b + 0.5 * c, donate_argnums=0)
        self.times = []

    def run(self, timed=True):
        t0 = time.perf_counter()
        self.b = self.f(self.b, self.c)
        self.b.block_until_ready()
        if timed:
            self.times.append(time.perf_counter() - t0)

    def result(self):
        s = summarize(self.times)
        s["gb_s"] = 12 * self.n / s["median_s"] / 1e9
        return s


class DispatchFloor(JaxCase):
    """A jitted step that computes nothing: params and two moment trees passed through
    (donated), the gradients passed in. Same buffers in and out as Adam's step: its time
    is what jit's dispatch of that many buffers costs, the floor of any tree-path step."""

    def __init__(self, shapes, grads):  # JaxCase.run is reused as it is
        self.params = make_tree(shapes, 0)
        self.state = (make_tree(shapes, 2), make_tree(shapes, 3))
        self.grads = grads
        self.step = jax.jit(lambda p, s, g: (p, s), donate_argnums=(0, 1))
        self.times, self.nnx = [], False


class PackedDispatchFloor(DispatchFloor):
    """The dispatch floor of a packed-state step: the params and gradients as trees, the
    two moments as one buffer each (``accel_jax packed``'s buffers in and out)."""

    def __init__(self, shapes, grads):
        super().__init__(shapes, grads)
        n = sum(int(np.prod(s)) for s in shapes)
        self.state = (jnp.zeros((n,), jnp.float32), jnp.ones((n,), jnp.float32))


class TorchCase:
    """torch.optim's fused step, timed in the same rounds as the JAX steps."""

    def __init__(self, opt, shapes):
        import torch

        torch.manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
        for p in self.params:
            p.grad = torch.randn(p.shape) * 0.02
        self.o = torch_optimizer(opt, self.params, "fused")
        self.times = []

    def run(self, timed=True):
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            self.o.step()
        if timed:
            self.times.append(time.perf_counter() - t0)
        # torch's OpenMP threads spin for a while after a step and would slow whatever is
        # timed next on 2 cores (benchmarks/kernel_bandwidth.py measured it); forcing them
        # to sleep instead (OMP_WAIT_POLICY=PASSIVE) slows torch's own many-leaf steps.
        time.sleep(0.05)


def interleaved(cases, repeats, warmup=2):
    """Times every case once per round, round after round, so they share the noise.

    The order rotates from round to round, so no case always follows the same one.
    """
    for _ in range(warmup):
        for c in cases:
            c.run(timed=False)
    for r in range(repeats):
        for c in cases[r % len(cases):] + cases[: r % len(cases)]:
            c.run()


def bench_torch(mode, opt, shapes, repeats):
    import torch

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * 0.02
    try:
        o = torch_optimizer(opt, params, mode)
        for _ in range(2):
            o.step()
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. fused unsupported on this device
        return {"error": str(e).splitlines()[0][:80]}
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            o.step()
            times.append(time.perf_counter() - t0)
    nbytes = sum(
        v.numel() * v.element_size()
        for st in o.state.values()
        for v in st.values()
        if torch.is_tensor(v)
    )
    return {**summarize(times), "state_bytes": int(nbytes)}


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--trees", default="A,B,C")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per case")
    ap.add_argument("--compile-leaves", default=None, help="e.g. 100,1000,10000, or none")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help="implementations timed together (optax always): " + ", ".join(IMPLS))
    ap.add_argument("--no-flax", action="store_true",
                    help="without the TrainState and nnx.Optimizer cases")
    ap.add_argument("--flat-leaves", default=None,
                    help="time eager flatten_params and the first unflatten at these leaf "
                         "counts (leaves of 1,024 values), e.g. 1000,10000; default none")
    ap.add_argument("--compile-rss", action="store_true",
                    help="also compile optax's, accel_jax's and the packed step each in a fresh "
                         "process and report its peak memory (RSS)")
    ap.add_argument("--train-share", type=int, default=None, metavar="LEAVES",
                    help="time whole train steps (loss + grad + Adam) over LEAVES leaves of "
                         "1,024 values, and each optimizer's share of them")
    ap.add_argument("--quick-extras", action="store_true",
                    help="skip the slow 8-bit XLA-path step (timed alone)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    trees = [t for t in args.trees.split(",") if t]
    opts = choices(ap, args.optimizers, OPTIMIZERS)
    spec = args.compile_leaves or ("10,20" if args.quick else "100,1000,10000")
    compile_leaves = [int(x) for x in spec.split(",") if x and spec != "none"]
    have_torch = use_torch(args.no_torch)

    from benchmarks.compile_time import compile_in_child, compile_time, flat_times, train_share

    results: dict = {"machine": machine(), "command": " ".join(["python"] + sys.argv),
                     "repeats": repeats, "steps": [], "compile": [], "quality": {}}
    print("machine:", json.dumps(results["machine"]))

    n_a = sum(int(np.prod(s)) for s in tree_shapes("A", args.quick))
    impls = choices(ap, args.impls, IMPLS, "implementation")
    impls = ["optax"] + [i for i in impls if i != "optax"]  # the ratios' baseline first
    torch_modes = ["for-loop", "foreach"] if have_torch else []
    triads = []
    for tree in trees:
        shapes = tree_shapes(tree, args.quick)
        n = sum(int(np.prod(s)) for s in shapes)
        print(f"\n== tree {tree}: {len(shapes)} leaves, {n:,} values")
        print(f"{'optimizer':<13} {'implementation':<20} {'median ms':>10} {'IQR':>5} "
              f"{'GB/s':>6} {'% triad':>7} {'vs optax':>8} {'state MB':>9} {'temp/params':>9}")
        for opt in opts:
            gc.collect()
            # optax, accel_jax and the triad in turn, round after round: the ratios
            # and the triad fraction compare steps taken under the same load.
            grads = make_tree(shapes, 1)
            names = [i for i in impls if "8-bit" not in i or opt in ("adam", "adamw")]
            flax_cases = ("TrainState", "Optimizer")
            names = [i for i in names if not (args.no_flax and any(f in i for f in flax_cases))]
            cases = [JaxCase(i, opt, shapes, grads) for i in names]
            if have_torch and opt != "rmsprop":  # torch 2.13's RMSprop has no fused step
                names.append("torch fused")
                cases.append(TorchCase(opt, shapes))
            tri = Triad(n_a)
            floors = {}
            if opt == "adam":
                floors["dispatch floor"] = DispatchFloor(shapes, grads)
                if any("packed" in i for i in names):
                    floors["dispatch floor, packed"] = PackedDispatchFloor(shapes, grads)
            interleaved([*cases, tri, *floors.values()], repeats)
            t = tri.result()
            triads.append({"tree": tree, "optimizer": opt, **t})
            rows = []
            for impl, c in zip(names, cases, strict=True):
                r = summarize(c.times)
                if isinstance(c, JaxCase):
                    r.update(state_bytes=c.state_bytes())
                    if c.temp_bytes() is not None:
                        r.update(temp_bytes=c.temp_bytes())
                rows.append((impl, r))
            del cases, grads, tri
            gc.collect()
            # Then, one at a time (much slower):
            extra = [("accel_jax 8-bit xla", "jax")] if opt in ("adam", "adamw") else []
            extra = [] if args.quick_extras else extra
            extra += [(f"torch {m}", "torch") for m in torch_modes]
            for impl, kind in extra:
                gc.collect()
                if kind == "jax":
                    c = JaxCase(impl, opt, shapes, make_tree(shapes, 1))
                    interleaved([c], repeats)
                    r = {**summarize(c.times), "state_bytes": c.state_bytes(),
                         "temp_bytes": c.temp_bytes()}
                    del c
                else:
                    r = bench_torch(impl.split(" ", 1)[1], opt, shapes, repeats)
                rows.append((impl, r))
            base = rows[0][1]["median_s"]
            for impl, r in rows:
                r.update(tree=tree, optimizer=opt, implementation=impl, values=n,
                         leaves=len(shapes), triad_gb_s=t["gb_s"])
                results["steps"].append(r)
                if "error" in r:
                    print(f"{opt:<13} {impl:<18} {'n/a: ' + r['error']}")
                    continue
                gbs = IDEAL_BYTES[opt] * n / r["median_s"] / 1e9
                r.update(gb_s=gbs, triad_fraction=gbs / t["gb_s"],
                         ratio_vs_optax=r["median_s"] / base)
                temp = (f" {r['temp_bytes'] / (4 * n):>9.3f}" if "temp_bytes" in r else "")
                state_mb = r["state_bytes"] / 2**20 if "state_bytes" in r else float("nan")
                print(f"{opt:<13} {impl:<20} {r['median_s'] * 1e3:>10.2f} {r['iqr_rel']:>5.0%} "
                      f"{gbs:>6.1f} {r['triad_fraction']:>7.0%} {r['ratio_vs_optax']:>8.2f} "
                      f"{state_mb:>9.1f}{temp}", flush=True)
            print(f"{'':<13} {'(triad, same rounds)':<18} {t['median_s'] * 1e3:>10.2f} "
                  f"{t['iqr_rel']:>5.0%} {t['gb_s']:>6.1f}", flush=True)
            for label, floor in floors.items():
                fl = summarize(floor.times)
                key = "dispatch_floor" if label == "dispatch floor" else "dispatch_floor_packed"
                results.setdefault(key, []).append({"tree": tree, **fl})
                print(f"{'':<13} {'(' + label + ')':<18} {fl['median_s'] * 1e3:>10.2f} "
                      f"{fl['iqr_rel']:>5.0%}   (no arithmetic: jit's cost of these buffers)",
                      flush=True)
            del floors
    results["triad"] = triads

    for leaves in [int(x) for x in (args.flat_leaves or "").split(",") if x]:
        results.setdefault("flat", []).append(flat_times(leaves))
        r = results["flat"][-1]
        print(f"\n== flat params, {leaves} leaves of 1,024 values: flatten_params "
              f"{r['flatten_s']:.2f} s, first layout.unflatten {r['unflatten_s']:.2f} s "
              f"(eager)", flush=True)

    if compile_leaves:
        size = 64 if args.quick else 1024
        print(f"\n== compile time (s) of the jitted Adam step, leaves of {size} values; and of "
              "a whole train step (loss + grad + step) where leaves <= 1000")
        print(f"{'leaves':>7} {'optax':>8} {'accel_jax':>10} {'ratio':>6} {'flat':>7} "
              f"{'ratio':>6} {'train: optax':>13} {'train: flat':>12} {'xla path':>9} "
              f"{'packed':>7} {'ratio':>6}")
        for leaves in compile_leaves:
            row = {"leaves": leaves}
            for impl in ["optax", "accel_jax", "accel_jax flat", "accel_jax packed"]:
                gc.collect()
                row[impl] = compile_time(impl, leaves, size)
            if leaves <= 1000:  # at 10,000 leaves it compiles as slowly as optax (RESULTS.md)
                row["accel_jax xla"] = compile_time("accel_jax xla", leaves, size)
            if leaves <= 1000:
                for impl in ["optax", "accel_jax flat"]:
                    row[f"train {impl}"], row[f"train {impl} step_s"] = compile_time(
                        impl, leaves, size, train_step=True)
            results["compile"].append(row)
            train = (f"{row['train optax']:>13.2f} {row['train accel_jax flat']:>12.2f}"
                     if "train optax" in row else f"{'-':>13} {'-':>12}")
            if "train optax" in row:
                train += (f"  (train step runs: optax {row['train optax step_s'] * 1e3:.1f} ms,"
                          f" flat {row['train accel_jax flat step_s'] * 1e3:.1f} ms)")
            print(f"{leaves:>7} {row['optax']:>8.2f} {row['accel_jax']:>10.2f} "
                  f"{row['accel_jax'] / row['optax']:>6.2f} {row['accel_jax flat']:>7.2f} "
                  f"{row['accel_jax flat'] / row['optax']:>6.2f} {train} "
                  f"{row.get('accel_jax xla', float('nan')):>9.2f} "
                  f"{row['accel_jax packed']:>7.2f} "
                  f"{row['accel_jax packed'] / row['optax']:>6.2f}", flush=True)
            if args.compile_rss:
                for impl in ["optax", "accel_jax", "accel_jax packed"]:
                    child = compile_in_child(impl, leaves, size)
                    row[f"{impl} child"] = child
                    print(f"{'':>7} {impl}: {child['seconds']:.2f} s in a fresh process, "
                          f"peak RSS +{child['rss_mb']:.0f} MB", flush=True)

    if args.train_share:
        shapes = [(1024,)] * args.train_share
        extra = {"torch fused (step alone)": TorchCase("adam", shapes)} if have_torch else {}
        share = train_share(args.train_share, 1024, repeats, extra)
        results["train_share"] = {"leaves": args.train_share, **share}
        print(f"\n== whole train step (loss + grad + Adam), {args.train_share} leaves of 1,024 "
              "values: median ms; the optimizer's share = minus the step without optimizer")
        for name, r in share.items():
            extra_s = (f"  share {r['share_s'] * 1e3:6.2f} ms" if "share_s" in r else "")
            compiled = f"  (compile {r['compile_s']:.1f} s)" if "compile_s" in r else ""
            print(f"{name:<26} {r['median_s'] * 1e3:8.2f} ms  IQR {r['iqr_rel']:>4.0%}"
                  f"{extra_s}{compiled}", flush=True)

    if not args.no_quality:
        from benchmarks.quality import state_formats, train_digits

        steps = 20 if args.quick else 500
        print(f"\n== Adam state formats on digits (MLP 64-512-10, {steps} steps, final loss)")
        ref = None
        for name, tx in state_formats().items():
            loss, nbytes = train_digits(tx, steps=steps)
            ref = ref or (loss, nbytes)
            results["quality"][name] = {"loss": loss, "state_bytes": nbytes}
            print(f"{name:<18} loss {loss:.5f} ({loss / ref[0] - 1:+.1%})  state "
                  f"{nbytes:>9,} bytes ({nbytes / ref[1]:.2f}x)", flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
