"""The optimizer comparison (the main job): which optimizer gets each kind of model to a
good result soonest, measured on fixed workloads in the spirit of MLCommons AlgoPerf.

Workloads (``examples/_workloads.py``; nothing is downloaded): MNIST-1D with a 1-D CNN,
a character-level transformer language model on the Python documentation's text, the
scikit-learn digits MLP and the seeds' elongated bowl. Every optimizer the library
exports, at (a) its framework's default learning rate and (b) the rate the range test
(:func:`accel_jax.find_learning_rate`) suggests, trains the same model from the same
initialization on the same minibatches for the same number of steps, per seed; the
target of each workload is fixed in advance. Measured: steps to target, wall time to
target (compilation and evaluation excluded), final validation metric, as mean and
spread over the seeds. Speed and quality stars are derived from these numbers
(``_bench.assign_stars``) and printed next to the seeds' table, with a verdict per claim
of the seeds. Writes ``comparison.md``, ``results.json`` (every number) and the plots to
``--out`` (default ``out/compare/``)::

    python examples/compare_optimizers.py             # 1 seed, about 5 minutes on 2 CPU cores
    python examples/compare_optimizers.py --full      # 3 seeds, longer budgets
    python examples/compare_optimizers.py --quick     # a few steps: what the tests run
    python examples/compare_optimizers.py --workloads digits bowl --optimizers Adam SGD
    python examples/compare_optimizers.py --schedule  # warmup (5%) + cosine decay to 0
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402
import _report  # noqa: E402
import _workloads  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import accel_jax as aj  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Spec:
    """An optimizer of the comparison: ``accel_jax.<function>(lr, **kwargs)``."""

    function: str
    kwargs: dict[str, Any]
    default_lr: float
    lr_source: str  # whose default the rate is
    family: str  # "sgd", "adaptive" or "frontier": the line style of the plots
    schedule_free: bool = False  # evaluated at schedule_free_eval_params(state, params)

    def __call__(self, learning_rate):
        return getattr(aj, self.function)(learning_rate, **self.kwargs)

    def call(self, learning_rate: float) -> str:
        """The call as shown in the tables: ``sgd(0.01, momentum=0.9)``."""
        args = [f"{learning_rate:.3g}"]
        args += [f"{k}={v!r}" for k, v in self.kwargs.items() if k != "exclude_layers"]
        return f"{self.function}({', '.join(args)})"


_KERAS = {"convention": "keras"}
_TORCH = {"convention": "torch"}
#: The seeds' nine (Keras' classes with their defaults, momentum 0.9 as in the seeds),
#: then the frontier ones at their reference framework's default rate.
OPTIMIZERS: dict[str, Spec] = {
    "SGD": Spec("sgd", _KERAS, 0.01, "Keras", "sgd"),
    "Momentum": Spec("sgd", {"momentum": 0.9, **_KERAS}, 0.01, "Keras", "sgd"),
    "Nesterov": Spec("sgd", {"momentum": 0.9, "nesterov": True, **_KERAS}, 0.01, "Keras", "sgd"),
    "AdaGrad": Spec("adagrad", _KERAS, 0.001, "Keras", "adaptive"),
    "RMSProp": Spec("rmsprop", _KERAS, 0.001, "Keras", "adaptive"),
    "Adam": Spec("adam", _KERAS, 0.001, "Keras", "adaptive"),
    "AdaMax": Spec("adamax", _KERAS, 0.002, "Keras", "adaptive"),
    "Nadam": Spec("nadam", _KERAS, 0.001, "Keras", "adaptive"),
    "AdamW": Spec("adamw", _KERAS, 0.001, "Keras", "adaptive"),
    "RAdam": Spec("radam", _TORCH, 0.001, "torch", "frontier"),
    "NAdamW": Spec("nadamw", _TORCH, 0.002, "torch", "frontier"),
    "Adadelta": Spec("adadelta", _TORCH, 1.0, "torch", "frontier"),
    "Lion": Spec("lion", _KERAS, 0.001, "Keras", "frontier"),
    # Muon on the hidden matrices; AdamW (same rate, torch's pairing) on embeddings,
    # the output head and every other leaf.
    "Muon": Spec("muon", {"exclude_layers": ("head", "embed"), **_TORCH}, 0.001, "torch",
                 "frontier"),
    "Adafactor": Spec("adafactor", _TORCH, 0.01, "torch", "frontier"),
    "LAMB": Spec("lamb", {}, 0.001, "timm", "frontier"),
    "LARS": Spec("lars", {}, 1.0, "timm", "frontier"),
    "SF-AdamW": Spec("schedule_free_adamw", {}, 0.0025, "reference", "frontier",
                     schedule_free=True),
    "SF-SGD": Spec("schedule_free_sgd", {}, 1.0, "reference", "frontier", schedule_free=True),
}

#: The seeds' table: (convergence speed, convergence quality).
SEEDS_STARS = {
    "SGD": ("*", "***"),
    "Momentum": ("**", "***"),
    "Nesterov": ("**", "***"),
    "AdaGrad": ("***", "* (stops too early)"),
    "RMSProp": ("***", "** or ***"),
    "Adam": ("***", "** or ***"),
    "AdaMax": ("***", "** or ***"),
    "Nadam": ("***", "** or ***"),
    "AdamW": ("***", "** or ***"),
}

LR_MODES = ("default", "range test")
RANGE_TEST_STEPS = {"quick": 30, "default": 80, "full": 200}


def exported_optimizers() -> list[str]:
    """The names of :data:`OPTIMIZERS` whose function ``accel_jax`` exports."""
    return [name for name, spec in OPTIMIZERS.items() if hasattr(aj, spec.function)]


def run_workload(w: _workloads.Workload, names: list[str], seeds: list[int], mode: str,
                 schedule: bool, progress: bool) -> dict:
    """Every optimizer of ``names`` at both learning rates and every seed on ``w``."""
    from tqdm import tqdm

    seeds = seeds[:1] if w.deterministic else seeds
    total = w.steps[mode]
    evaluate = _bench.make_evaluate(w)
    bar = tqdm(total=len(names) * len(LR_MODES) * len(seeds) * total, desc=f"{w.name:>8}",
               unit="step", disable=not progress, file=sys.stderr, leave=True)
    runs, range_tests = [], {}
    executor = concurrent.futures.ThreadPoolExecutor(1)  # compiles while the range test runs
    for name in names:
        spec = OPTIMIZERS[name]
        bar.set_postfix_str(name)
        factory = _bench.schedule_factory(spec, total) if schedule else spec
        eval_params = aj.schedule_free_eval_params if spec.schedule_free else None
        trainer = _bench.Trainer(w, factory, evaluate, eval_params, mode)
        trainer.compile_in(executor)
        rt = _bench.range_test(w, spec, RANGE_TEST_STEPS[mode])
        suggested = rt.suggested_lr if np.isfinite(rt.suggested_lr) else spec.default_lr
        range_tests[name] = {"suggested_lr": float(suggested), "diverged": bool(rt.diverged),
                             "steps": int(len(rt.losses))}
        for lr_mode, lr in zip(LR_MODES, (spec.default_lr, suggested), strict=True):
            for seed in seeds:
                runs.append(trainer.run(name, lr_mode, lr, seed, on_chunk=bar.update))
    bar.close()
    executor.shutdown()
    summaries = []
    for lr_mode in LR_MODES:
        group = [_bench.summarize([r for r in runs if r.optimizer == n and r.lr_mode == lr_mode])
                 for n in names]
        _bench.assign_stars(w, group)
        summaries += group
    return {
        "title": w.title, "metric": w.metric, "higher_is_better": w.higher_is_better,
        "target": w.target, "steps": total, "eval_every": w.eval_every[mode],
        "seeds": seeds, "log_scale": w.log_scale,
        "range_tests": range_tests,
        "summaries": [dataclasses.asdict(s) for s in summaries],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few steps (what the tests run)")
    size.add_argument("--full", action="store_true", help="3 seeds and longer budgets")
    p.add_argument("--out", default=os.path.join("out", "compare"),
                   help="folder for the files written (default: out/compare)")
    p.add_argument("--workloads", nargs="+", choices=list(_workloads.WORKLOADS),
                   default=list(_workloads.WORKLOADS))
    p.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=None,
                   help="default: every optimizer accel_jax exports")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="default: 0 (0 1 2 with --full)")
    p.add_argument("--schedule", action="store_true",
                   help="linear warmup over 5%% of the budget, then cosine decay to 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--from-json", metavar="RESULTS_JSON",
                   help="train nothing: write the tables and plots of a results.json again")
    return p.parse_args(argv)


def _rounded_curves(results: dict) -> dict:
    """``results`` with the runs' curves to 5 significant digits (the JSON stays small;
    the summaries, which the tables show, keep every digit)."""
    curves = ("train_loss", "val_loss", "metric", "seconds")
    workloads = {
        name: {**w, "runs": [{**r, **{k: [float(f"{v:.5g}") for v in r[k]] for k in curves}}
                             for r in w["runs"]]}
        for name, w in results["workloads"].items()
    }
    return {**results, "workloads": workloads}


def write_outputs(results: dict, out: str) -> list[str]:
    """``comparison.md``, ``readme_fragment.md``, ``results.json`` and the plots in ``out``."""
    os.makedirs(out, exist_ok=True)
    md = _report.markdown(results, SEEDS_STARS)
    print(md)
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "readme_fragment.md"), "w") as f:
        f.write(_report.readme_fragment(results, SEEDS_STARS))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(_rounded_curves(results), f, allow_nan=True)
    return _report.plots(results, out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
        results["files"] = write_outputs(results, os.path.abspath(args.out))
        return results
    mode = "quick" if args.quick else "full" if args.full else "default"
    names = args.optimizers or exported_optimizers()
    seeds = args.seeds or ([0, 1, 2] if args.full else [0])
    start, cpu_start = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {
        "protocol": {
            "mode": mode, "seeds": seeds, "schedule": args.schedule, "optimizers": {
                n: {"call": OPTIMIZERS[n].call(OPTIMIZERS[n].default_lr),
                    "lr_source": OPTIMIZERS[n].lr_source, "family": OPTIMIZERS[n].family}
                for n in names},
            "range_test": {"min_lr": 1e-5, "max_lr": 10.0, "steps": RANGE_TEST_STEPS[mode],
                           "rule": "tenth_of_minimum"},
            "jax": jax.__version__, "device": jax.devices()[0].device_kind,
        },
        "workloads": {},
    }
    for wname in args.workloads:
        w = _workloads.WORKLOADS[wname]()
        results["workloads"][wname] = run_workload(w, names, seeds, mode, args.schedule,
                                                   not args.no_progress)
    results["seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu_start
    results["verdicts"] = _report.verdicts(results)
    out = os.path.abspath(args.out)
    plots = write_outputs(results, out)
    print(f"wrote {os.path.join(out, 'comparison.md')}, results.json and {len(plots)} plots "
          f"to {out} in {results['seconds']:.0f} s ({results['cpu_seconds']:.0f} s of CPU)")
    results["files"] = plots
    return results


if __name__ == "__main__":
    main()
