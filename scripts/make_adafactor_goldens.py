"""Writes tests/reference/torch_adafactor_<variant>.npz: torch.optim.Adafactor trajectories.

Run from the repository root by a maintainer with torch installed (torch is not a
test dependency; ``tests/test_conformance_adafactor.py`` reads the stored data)::

    python scripts/make_adafactor_goldens.py

Same problems, steps, learning-rate rule and file layout as
``scripts/make_torch_goldens.py`` (see tests/reference/README.md), whose pieces this
script reuses. ``spec`` uses accel_jax's (optax's) argument names, as the tests
define each variant; ``torch`` gives the ``torch.optim.Adafactor`` arguments that
mean the same (every other argument at torch's default: ``eps=(None, 1e-3)``,
``d=1.0``, ``maximize=False``).
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from make_torch_goldens import torch_optim, write_golden  # noqa: E402

COMMAND = "python scripts/make_adafactor_goldens.py"

VARIANTS = {
    "adafactor_default": dict(
        spec=dict(lr=0.01, decay=0.98, min_dim_size_to_factor=2), torch={}
    ),
    "adafactor_relative_step": dict(
        spec=dict(lr=0.5, min_dim_size_to_factor=2), torch={}
    ),
    "adafactor_weight_decay": dict(
        spec=dict(lr=0.02, decay=0.98, min_dim_size_to_factor=2, weight_decay_rate=0.1),
        torch=dict(weight_decay=0.1),
    ),
    "adafactor_decay_rate": dict(
        spec=dict(lr=0.05, min_dim_size_to_factor=2, decay_rate=0.5, clipping_threshold=2.0),
        torch=dict(beta2_decay=-0.5, d=2.0),
    ),
}


def main() -> None:
    for vname, variant in VARIANTS.items():
        meta = {
            "torch_version": torch.__version__,
            "command": COMMAND,
            "optimizer": "torch.optim.Adafactor",
            "kwargs": {**variant["torch"], "foreach": False},
        }
        write_golden(
            "torch", vname, variant["spec"], torch_optim("Adafactor", **variant["torch"]), meta
        )


if __name__ == "__main__":
    main()
