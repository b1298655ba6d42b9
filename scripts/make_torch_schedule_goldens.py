"""Writes tests/reference/torch_schedules.npz: golden values from torch.optim.lr_scheduler.

Run from the repository root by a maintainer with torch installed (torch is not a
test dependency; the tests read the stored data)::

    python scripts/make_torch_schedule_goldens.py

For every case the file holds ``<case>/config`` (a JSON string: the scheduler,
its arguments, the optimizer and the number of steps) and the recorded arrays:

* schedulers: ``<case>/lr`` (and ``<case>/momentum`` when momentum is cycled),
  the value in the optimizer's param group after ``k`` calls of
  ``scheduler.step()``, for ``k = 0 .. steps - 1`` — the value used by the
  ``k``-th optimizer step (accel_jax's step ``k``);
* ReduceLROnPlateau: ``<case>/values`` (the scripted metric sequence) and
  ``<case>/lr``, the learning rate after each ``scheduler.step(value)``, with
  base learning rate 1 so that it is accel_jax's plateau ``scale``;
* trajectories: ``<case>/x``, the parameters after each optimizer step on
  ``tests.problems.rotated_quadratic()`` in float64, with the schedule's
  learning rate and momentum (Adam: beta1) cycled by ``OneCycleLR``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.problems import rotated_quadratic  # noqa: E402

OUT = ROOT / "tests" / "reference" / "torch_schedules.npz"
S = torch.optim.lr_scheduler

SCHEDULERS = {
    "one_cycle_cos": dict(
        scheduler="OneCycleLR", steps=100, lr=0.1,
        kwargs=dict(max_lr=0.1, total_steps=100, cycle_momentum=False),
    ),
    "one_cycle_cos_momentum": dict(
        scheduler="OneCycleLR", steps=100, lr=0.1, optimizer_kwargs=dict(momentum=0.9),
        kwargs=dict(max_lr=0.1, total_steps=100, cycle_momentum=True),
    ),
    "one_cycle_linear_three_phase_momentum": dict(
        scheduler="OneCycleLR", steps=80, lr=0.5, optimizer_kwargs=dict(momentum=0.9),
        kwargs=dict(
            max_lr=0.5, total_steps=80, pct_start=0.25, anneal_strategy="linear",
            div_factor=10.0, final_div_factor=100.0, three_phase=True,
            base_momentum=0.8, max_momentum=0.9, cycle_momentum=True,
        ),
    ),
    "step_lr": dict(scheduler="StepLR", steps=40, lr=0.1, kwargs=dict(step_size=7, gamma=0.5)),
    "multi_step_lr": dict(
        scheduler="MultiStepLR", steps=40, lr=0.1, kwargs=dict(milestones=[5, 12, 30], gamma=0.3)
    ),
    "exponential_lr": dict(scheduler="ExponentialLR", steps=60, lr=0.1, kwargs=dict(gamma=0.95)),
    "cosine_annealing_lr": dict(
        scheduler="CosineAnnealingLR", steps=46, lr=0.1, kwargs=dict(T_max=30, eta_min=1e-3)
    ),
    "polynomial_lr": dict(
        scheduler="PolynomialLR", steps=40, lr=0.1, kwargs=dict(total_iters=25, power=2.0)
    ),
    "linear_lr": dict(
        scheduler="LinearLR", steps=20, lr=0.1,
        kwargs=dict(start_factor=0.25, end_factor=1.0, total_iters=10),
    ),
    "cosine_warm_restarts": dict(
        scheduler="CosineAnnealingWarmRestarts", steps=80, lr=0.1,
        kwargs=dict(T_0=10, T_mult=2, eta_min=1e-3),
    ),
    "cosine_warm_restarts_t_mult_1": dict(
        scheduler="CosineAnnealingWarmRestarts", steps=40, lr=0.1,
        kwargs=dict(T_0=7, T_mult=1, eta_min=0.0),
    ),
}


def _plateau_values(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Scripted metric sequences: progress, plateaus with noise, a late improvement."""
    t = np.arange(60)
    base = np.concatenate([np.linspace(1.0, 0.5, 15), np.full(20, 0.5), np.linspace(0.5, 0.3, 5),
                           np.full(20, 0.3)])
    noisy = base + 0.004 * rng.standard_normal(t.size)
    if kind == "loss":
        return noisy
    if kind == "accuracy":
        return 1.0 - noisy
    if kind == "negative":  # e.g. a negative log-likelihood bound or -reward
        return noisy - 2.0
    raise ValueError(kind)


PLATEAUS = {
    "plateau_min_rel": dict(values="loss", kwargs=dict(
        mode="min", factor=0.5, patience=2, threshold=0.01, threshold_mode="rel")),
    "plateau_min_abs_cooldown": dict(values="loss", kwargs=dict(
        mode="min", factor=0.1, patience=1, threshold=0.02, threshold_mode="abs", cooldown=2,
        min_lr=1e-3)),
    "plateau_max_rel_cooldown": dict(values="accuracy", kwargs=dict(
        mode="max", factor=0.5, patience=0, threshold=0.01, threshold_mode="rel", cooldown=1)),
    "plateau_max_abs": dict(values="accuracy", kwargs=dict(
        mode="max", factor=0.3, patience=3, threshold=0.005, threshold_mode="abs",
        min_lr=0.05)),
    "plateau_negative_min_abs": dict(values="negative", kwargs=dict(
        mode="min", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs")),
    # torch's rel threshold with negative values: best * (1 - threshold) lies *above*
    # best, so a worse value counts as an improvement. Stored to document the difference.
    "plateau_negative_min_rel_torch_quirk": dict(values="negative", kwargs=dict(
        mode="min", factor=0.5, patience=2, threshold=0.01, threshold_mode="rel")),
}

TRAJECTORIES = {
    "trajectory_sgd_one_cycle_momentum": dict(
        optimizer="SGD", optimizer_kwargs=dict(momentum=0.9), steps=100, lr=0.015,
        kwargs=dict(max_lr=0.015, total_steps=100, cycle_momentum=True),
    ),
    "trajectory_sgd_nesterov_one_cycle_linear": dict(
        optimizer="SGD", optimizer_kwargs=dict(momentum=0.9, nesterov=True), steps=100, lr=0.01,
        kwargs=dict(max_lr=0.01, total_steps=100, anneal_strategy="linear", three_phase=True,
                    cycle_momentum=True),
    ),
    "trajectory_adam_one_cycle_beta1": dict(
        optimizer="Adam", optimizer_kwargs=dict(betas=(0.9, 0.999)), steps=100, lr=0.05,
        kwargs=dict(max_lr=0.05, total_steps=100, cycle_momentum=True),
    ),
}


def _record_scheduler(cfg: dict) -> dict:
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=cfg["lr"], **cfg.get("optimizer_kwargs", {}))
    sched = getattr(S, cfg["scheduler"])(opt, **cfg["kwargs"])
    lrs, momenta = [], []
    for _ in range(cfg["steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0].get("momentum", 0.0))
        opt.step()  # no gradient: a no-op that keeps the scheduler's order check quiet
        sched.step()
    out = {"lr": np.asarray(lrs, np.float64)}
    if cfg["kwargs"].get("cycle_momentum"):
        out["momentum"] = np.asarray(momenta, np.float64)
    return out


def _record_plateau(cfg: dict, values: np.ndarray) -> dict:
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=1.0)
    sched = S.ReduceLROnPlateau(opt, **cfg["kwargs"])
    lrs = []
    for value in values:
        opt.step()
        sched.step(float(value))
        lrs.append(opt.param_groups[0]["lr"])
    return {"values": values, "lr": np.asarray(lrs, np.float64)}


def _record_trajectory(cfg: dict) -> dict:
    problem = rotated_quadratic()
    a, b = torch.tensor(problem["A"]), torch.tensor(problem["b"])
    x = torch.tensor(problem["x0"], requires_grad=True)
    opt = getattr(torch.optim, cfg["optimizer"])([x], lr=cfg["lr"], **cfg["optimizer_kwargs"])
    sched = S.OneCycleLR(opt, **cfg["kwargs"])
    xs = []
    for _ in range(cfg["steps"]):
        opt.zero_grad()
        loss = 0.5 * x @ (a @ x) - b @ x
        loss.backward()
        opt.step()
        sched.step()
        xs.append(x.detach().numpy().copy())
    return {"x": np.asarray(xs, np.float64)}


def main() -> None:
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}

    def store(name: str, cfg: dict, recorded: dict) -> None:
        arrays[f"{name}/config"] = np.asarray(json.dumps(cfg))
        for key, value in recorded.items():
            arrays[f"{name}/{key}"] = value

    for name, cfg in SCHEDULERS.items():
        store(name, cfg, _record_scheduler(cfg))
    sequences = {kind: _plateau_values(kind, rng) for kind in ("loss", "accuracy", "negative")}
    for name, cfg in PLATEAUS.items():
        store(name, cfg, _record_plateau(cfg, sequences[cfg["values"]]))
    for name, cfg in TRAJECTORIES.items():
        store(name, cfg, _record_trajectory(cfg))
    arrays["torch_version"] = np.asarray(torch.__version__)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(arrays)} arrays, torch {torch.__version__})")


if __name__ == "__main__":
    main()
