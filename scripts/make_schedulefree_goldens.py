"""Writes the schedule-free goldens: tests/reference/{schedulefree,keras}_schedule_free_*.npz.

Run from the repository root by a maintainer with torch, ``schedulefree`` and keras
(JAX backend) installed; none is a test dependency (tests/test_schedule_free.py
reads the stored data)::

    python scripts/make_schedulefree_goldens.py

Layout as ``scripts/make_torch_goldens.py`` (tests/reference/README.md), plus
``<dtype>/<problem>/<leaf>/eval``: the evaluation point ``x`` after each recorded
step. Each variant's ``spec`` is the one tests/test_schedule_free.py declares.

* ``schedulefree_<id>.npz``: facebookresearch's ``schedulefree`` package
  (``AdamWScheduleFree``, ``SGDScheduleFree``), with its default ``foreach=True``.
  Before step ``k`` (0-based) the param group's ``lr`` is set to ``lrs[k]``; the
  package applies its warmup on top. ``x`` is ``torch.lerp(y, z, 1 - 1/b1)`` on a
  copy: the arithmetic of ``optimizer.eval()``, without the ``eval()``/``train()``
  round trip, which would perturb ``y`` by rounding (checked once below).
* ``keras_<id>.npz``: ``keras.optimizers.ScheduleFreeAdamW`` (JAX backend, x64
  enabled so that float64 runs are float64 throughout); ``optimizer.learning_rate``
  is assigned ``lrs[k]`` before step ``k``. Keras has no ``eval()``; ``x`` is
  ``(y - (1 - b1) z) / b1`` in the run's dtype, ``z`` the optimizer's ``momentum``
  variable.

Gradients are torch's, at the train point ``y``, for both.
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.make_torch_goldens import (  # noqa: E402
    STEPS,
    keras_trajectories,
    learning_rates,
    problems,
    save_golden,
    write_golden,
)

COMMAND = "python scripts/make_schedulefree_goldens.py"

# id -> (spec, ecosystems with goldens). The ids are tests/test_schedule_free.py's
# ``schedule_free_<optimizer>_<name>``; the spec is shared by every ecosystem.
VARIANTS = {
    "schedule_free_adamw_default": (
        dict(lr=0.02, decay=0.98, warmup_steps=10), ("schedulefree", "keras")
    ),
    "schedule_free_adamw_weight_decay": (
        dict(lr=0.02, b1=0.95, weight_decay=0.05), ("schedulefree",)
    ),
    "schedule_free_adamw_r": (
        dict(lr=0.02, warmup_steps=5, r=1.0, weight_lr_power=1.0), ("schedulefree",)
    ),
    "schedule_free_sgd_default": (dict(lr=0.01, decay=0.98, warmup_steps=10), ("schedulefree",)),
    "schedule_free_sgd_weight_decay": (
        dict(lr=0.01, b1=0.95, weight_decay=0.01), ("schedulefree",)
    ),
}


def torch_kwargs(vid: str, spec: dict) -> tuple[str, dict]:
    """The schedulefree class and its arguments besides ``lr``."""
    kw = {k: spec[k] for k in ("warmup_steps", "weight_decay", "r", "weight_lr_power") if k in spec}
    b1 = spec.get("b1", 0.9)
    if "adamw" in vid:
        return "AdamWScheduleFree", {**kw, "betas": (b1, 0.999)}
    return "SGDScheduleFree", {**kw, "momentum": b1}


def torch_eval_params(opt, params: dict) -> dict:
    """``x`` as ``opt.eval()`` computes it, on copies (``y`` is left untouched)."""
    group = opt.param_groups[0]
    b1 = group["betas"][0] if "betas" in group else group["momentum"]
    return {
        k: torch.lerp(p.detach().clone(), opt.state[p]["z"], 1 - 1 / b1).numpy()
        for k, p in params.items()
    }


def check_eval_matches_package(make_optimizer) -> None:
    """``torch_eval_params`` equals the package's own ``eval()`` (float64, 3 steps)."""
    torch.set_default_dtype(torch.float64)
    init, loss_fn = problems()["quadratic"]
    p = {k: torch.tensor(v).requires_grad_(True) for k, v in init.items()}
    opt = make_optimizer(list(p.values()), 0.02)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(p, torch.tensor).backward()
        opt.step()
    mine = torch_eval_params(opt, p)
    opt.eval()
    for k, x in p.items():
        np.testing.assert_array_equal(mine[k], x.detach().numpy())
    torch.set_default_dtype(torch.float32)


def schedulefree_golden(vid: str, spec: dict) -> pathlib.Path:
    import schedulefree

    name, kwargs = torch_kwargs(vid, spec)

    def make_optimizer(params, lr):
        opt = getattr(schedulefree, name)(params, lr=lr, **kwargs)
        opt.train()
        return opt

    check_eval_matches_package(make_optimizer)
    meta = {
        "command": COMMAND,
        "torch_version": torch.__version__,
        "schedulefree_version": _version("schedulefree"),
        "optimizer": f"schedulefree.{name}",
        "kwargs": {**kwargs, "foreach": True},
        "eval": "torch.lerp(y, z, 1 - 1/b1), the arithmetic of optimizer.eval()",
    }
    return write_golden("schedulefree", vid, spec, make_optimizer, meta,
                        eval_params=torch_eval_params)


def keras_golden(vid: str, spec: dict) -> pathlib.Path:
    import keras

    b1 = spec.get("b1", 0.9)

    def make_optimizer(lr):
        return keras.optimizers.ScheduleFreeAdamW(
            learning_rate=lr, beta_1=b1, warmup_steps=spec.get("warmup_steps", 0)
        )

    def eval_params(opt, y_var, dname):  # x = (y - (1 - b1) z) / b1, z the momentum
        y = np.asarray(y_var.numpy())
        z = np.asarray(opt._momentums[opt._get_variable_index(y_var)].numpy())
        b = np.asarray(b1, dname)
        return (y - (1 - b) * z) / b

    arrays = keras_trajectories(spec, make_optimizer, eval_params)
    meta = {
        "command": COMMAND,
        "keras_version": keras.__version__,
        "keras_backend": "jax (jax_enable_x64)",
        "optimizer": "keras.optimizers.ScheduleFreeAdamW",
        "kwargs": {"beta_1": b1, "warmup_steps": spec.get("warmup_steps", 0)},
        "eval": "(y - (1 - b1) * momentum) / b1",
        "variant": vid,
        "spec": spec,
        "steps": STEPS,
        "lr_rule": "optimizer.learning_rate = lrs[k] before step k (k = 0-based)",
    }
    return save_golden(f"keras_{vid}.npz", arrays, meta)


def foreach_difference(vid: str, spec: dict) -> float:
    """Largest |foreach=True - foreach=False| over the float32 MLP run (for the docs)."""
    import schedulefree

    from scripts.make_torch_goldens import run

    name, kwargs = torch_kwargs(vid, spec)
    init, loss_fn = problems()["mlp"]
    lrs = learning_rates(spec)
    runs = []
    for foreach in (True, False):
        def make(params, lr, _f=foreach):
            opt = getattr(schedulefree, name)(params, lr=lr, foreach=_f, **copy.deepcopy(kwargs))
            opt.train()
            return opt

        runs.append(run(make, torch.float32, init, loss_fn, lrs))
    return max(float(np.abs(runs[0][k]["params"] - runs[1][k]["params"]).max()) for k in init)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    total = 0
    for vid, (spec, ecosystems) in VARIANTS.items():
        for eco in ecosystems:
            path = (schedulefree_golden if eco == "schedulefree" else keras_golden)(vid, spec)
            total += path.stat().st_size
        if "schedulefree" in ecosystems:
            print(f"  {vid}: foreach True vs False, float32 MLP: "
                  f"max |diff| {foreach_difference(vid, spec):.3g}")
    print(f"total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
