"""Optimizer-state bytes of every optimizer on GPT-2-small shapes, against Adam.

No array is allocated: ``jax.eval_shape`` of each optimizer's ``init`` on the
parameter shapes of GPT-2 small (124,439,808 float32 values, 148 leaves), summed
by :func:`accel_jax.state_bytes`::

    python benchmarks/state_bytes.py
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
from sharding import gpt2_shapes  # noqa: E402

import accel_jax as aj  # noqa: E402

OPTIMIZERS = {
    "sgd": lambda: aj.sgd(0.1),
    "sgd, momentum": lambda: aj.sgd(0.1, momentum=0.9),
    "adagrad": lambda: aj.adagrad(0.1),
    "rmsprop": lambda: aj.rmsprop(1e-3),
    "adam": lambda: aj.adam(1e-3),
    "adam, bf16 moments": lambda: aj.adam(1e-3, mu_dtype="bfloat16", nu_dtype="bfloat16"),
    "adam, 8-bit state": lambda: aj.adam(1e-3, state_bits=8),
    "adamw": lambda: aj.adamw(1e-3),
    "adamax": lambda: aj.adamax(1e-3),
    "nadam": lambda: aj.nadam(1e-3),
    "radam": lambda: aj.radam(1e-3),
    "nadamw": lambda: aj.nadamw(1e-3),
    "adadelta": lambda: aj.adadelta(1.0),
    "lion": lambda: aj.lion(1e-4),
    "lamb": lambda: aj.lamb(1e-3),
    "lars": lambda: aj.lars(1.0),
    "adafactor": lambda: aj.adafactor(),
    "adafactor, momentum": lambda: aj.adafactor(momentum=0.9),
    "muon (every 2-D leaf; AdamW on vectors)": lambda: aj.muon(0.02),
    "schedule_free_adamw": lambda: aj.schedule_free_adamw(1e-3),
    "schedule_free_sgd": lambda: aj.schedule_free_sgd(1.0),
}


def main() -> None:
    params = gpt2_shapes()
    values = sum(x.size for x in jax.tree.leaves(params))
    sizes = {name: aj.state_bytes(jax.eval_shape(make().init, params))
             for name, make in OPTIMIZERS.items()}
    print(f"GPT-2 small: {values:,} float32 values ({values * 4 / 2**20:.1f} MiB)\n")
    print("| optimizer | state | x Adam |\n|---|---:|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 2**20:.1f} MiB | {size / sizes['adam']:.3f} |")


if __name__ == "__main__":
    main()
