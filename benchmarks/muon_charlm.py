"""Muon against AdamW on the main job's character transformer (issue 12's evidence).

Muon (optax.contrib's defaults: Nesterov, quintic Newton-Schulz, rate 0.02) on the
hidden matrices with AdamW at 1e-3 on the embeddings, the output head and every other
leaf, against AdamW alone at 1e-3 and 3e-3; 300 steps of the ``charlm`` workload of
``examples/compare_optimizers.py`` (same model, initialization and data order per
seed), final validation bits per character over seeds 0, 1, 2::

    python benchmarks/muon_charlm.py
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

from _bench import Trainer, make_evaluate  # noqa: E402
from _workloads import charlm  # noqa: E402

import accel_jax as aj  # noqa: E402

EXCLUDE = ("head", "embed")
CANDIDATES = {
    "AdamW 1e-3": (lambda lr: aj.adamw(lr, convention="torch"), 1e-3),
    "AdamW 3e-3": (lambda lr: aj.adamw(lr, convention="torch"), 3e-3),
    "Muon 0.02 + AdamW 1e-3": (
        lambda lr: aj.muon(lr, adam_learning_rate=1e-3, exclude_layers=EXCLUDE), 0.02),
    "Muon 0.05 + AdamW 1e-3": (
        lambda lr: aj.muon(lr, adam_learning_rate=1e-3, exclude_layers=EXCLUDE), 0.05),
}


def main(seeds=(0, 1, 2)) -> None:
    workload = charlm()
    evaluate = make_evaluate(workload)
    print("| optimizer | final val. bits/char per seed | mean |\n|---|---|---:|")
    for name, (factory, lr) in CANDIDATES.items():
        trainer = Trainer(workload, factory, evaluate, None, "default")
        finals = [trainer.run(name, "default", lr, seed).final_metric for seed in seeds]
        print(f"| {name} | {', '.join(f'{x:.3f}' for x in finals)} | "
              f"{sum(finals) / len(finals):.3f} |", flush=True)


if __name__ == "__main__":
    main()
