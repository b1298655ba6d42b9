"""Writes tests/reference/torch_<optimizer>_<variant>.npz: torch.optim golden trajectories.

Run from the repository root by a maintainer with torch installed (torch is not a
test dependency; ``tests/test_conformance.py`` reads the stored data)::

    python scripts/make_torch_goldens.py

For every variant below, in float32 and in float64, torch.optim runs closed loop
for ``STEPS`` steps on the two problems of ``tests/problems.py`` (the rotated
quadratic, dim 8, and the tanh MLP (6, 12, 3)), each with its own optimizer. Before
step ``k`` (0-based) the param group's ``lr`` is set to ``lrs[k]``: a constant, or
``lr0 * decay**k`` computed in float64, the same values the tests give accel_jax.
Each file holds:

* ``meta``: a JSON string (torch version, command, optimizer class and
  arguments, the variant's ``spec`` as the tests define it, the recorded steps);
* ``lrs`` (float64, ``STEPS``) and ``steps`` (int, the 1-based steps recorded);
* ``<dtype>/<problem>/<leaf>/init``: the starting params;
* ``<dtype>/<problem>/<leaf>/grads``: the gradient of every step (``STEPS`` rows);
* ``<dtype>/<problem>/<leaf>/params``: the params after each recorded step.

The tests replay the stored gradients through accel_jax and compare the params.
In float64 runs torch's default dtype is float64, so torch's scalar state (the
step count, NAdam's ``mu_product``) is float64 too, as a float64 user has it.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.problems import MLP_PARAM_NAMES, rotated_quadratic, small_mlp  # noqa: E402

OUT = ROOT / "tests" / "reference"
COMMAND = "python scripts/make_torch_goldens.py"
STEPS = 100
RECORDED = [k for k in range(1, STEPS + 1) if k <= 10 or k % 10 == 0]
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The variants: ``spec`` is what tests/test_conformance.py defines for the same name
# (it checks that the two agree); ``torch`` is the torch.optim class and its
# arguments besides ``lr`` (every other argument at torch's default).
VARIANTS = {
    "sgd_plain": dict(spec=dict(lr=0.01), torch=("SGD", {})),
    "sgd_momentum": dict(
        spec=dict(lr=0.01, decay=0.98, momentum=0.9), torch=("SGD", dict(momentum=0.9))
    ),
    "sgd_nesterov": dict(
        spec=dict(lr=0.01, decay=0.98, momentum=0.9, nesterov=True),
        torch=("SGD", dict(momentum=0.9, nesterov=True)),
    ),
    "sgd_weight_decay": dict(
        spec=dict(lr=0.01, weight_decay=0.1), torch=("SGD", dict(weight_decay=0.1))
    ),
    "sgd_momentum_weight_decay": dict(
        spec=dict(lr=0.01, decay=0.98, momentum=0.9, weight_decay=0.1),
        torch=("SGD", dict(momentum=0.9, weight_decay=0.1)),
    ),
    "adagrad_default": dict(spec=dict(lr=0.1, decay=0.98), torch=("Adagrad", {})),
    "rmsprop_plain": dict(spec=dict(lr=0.01), torch=("RMSprop", {})),
    "rmsprop_centered": dict(
        spec=dict(lr=0.01, centered=True), torch=("RMSprop", dict(centered=True))
    ),
    "rmsprop_momentum": dict(
        spec=dict(lr=0.01, decay=0.98, momentum=0.9), torch=("RMSprop", dict(momentum=0.9))
    ),
    "rmsprop_centered_momentum": dict(
        spec=dict(lr=0.01, decay=0.98, centered=True, momentum=0.9),
        torch=("RMSprop", dict(centered=True, momentum=0.9)),
    ),
    "adam_plain": dict(spec=dict(lr=0.02), torch=("Adam", {})),
    "adam_amsgrad": dict(
        spec=dict(lr=0.02, decay=0.98, amsgrad=True), torch=("Adam", dict(amsgrad=True))
    ),
    "adamw_default": dict(spec=dict(lr=0.02, decay=0.98), torch=("AdamW", {})),
    "adamax_default": dict(spec=dict(lr=0.02, decay=0.98), torch=("Adamax", {})),
    "nadam_default": dict(spec=dict(lr=0.02, decay=0.98), torch=("NAdam", {})),
}


def learning_rates(spec: dict) -> np.ndarray:
    """``lr`` at every step: constant, or ``lr * decay**k`` (k = 0, 1, ...) in float64."""
    k = np.arange(STEPS, dtype=np.float64)
    return spec["lr"] * spec.get("decay", 1.0) ** k


def problems() -> dict:
    """Per problem: the starting params (float64 NumPy) and a torch loss of the params."""
    q = rotated_quadratic()
    m = small_mlp()

    def quadratic_loss(p, t):
        a, b = t(q["A"]), t(q["b"])
        return 0.5 * p["x"] @ (a @ p["x"]) - b @ p["x"]

    def mlp_loss(p, t):
        h = torch.tanh(t(m["X"]) @ p["w0"] + p["b0"])
        return torch.mean((h @ p["w1"] + p["b1"] - t(m["Y"])) ** 2)

    return {
        "quadratic": ({"x": q["x0"]}, quadratic_loss),
        "mlp": ({k: m[k] for k in MLP_PARAM_NAMES}, mlp_loss),
    }


def run(make_optimizer, dtype: torch.dtype, init: dict, loss_fn, lrs: np.ndarray,
        eval_params=None) -> dict:
    """A torch-style optimizer's closed loop; returns ``{leaf: {"grads", "params"}}``.

    ``make_optimizer(param_list, lr)`` builds the optimizer (anything with
    ``param_groups`` and ``step()``). ``eval_params(optimizer, params)``, when given,
    returns extra per-leaf arrays recorded as ``"eval"`` after each recorded step (the
    evaluation point of a schedule-free optimizer, say).
    """

    def t(x):
        return torch.tensor(x, dtype=dtype)

    params = {k: t(v).requires_grad_(True) for k, v in init.items()}
    opt = make_optimizer(list(params.values()), float(lrs[0]))
    kinds = ("grads", "params", "eval") if eval_params else ("grads", "params")
    out = {k: {kind: [] for kind in kinds} for k in params}
    for step in range(1, STEPS + 1):
        for group in opt.param_groups:
            group["lr"] = float(lrs[step - 1])
        opt.zero_grad()
        loss_fn(params, t).backward()
        for k, p in params.items():
            out[k]["grads"].append(p.grad.detach().numpy().copy())
        opt.step()
        if step in RECORDED:
            for k, p in params.items():
                out[k]["params"].append(p.detach().numpy().copy())
            if eval_params:
                for k, x in eval_params(opt, params).items():
                    out[k]["eval"].append(np.asarray(x).copy())
    return {k: {key: np.stack(v) for key, v in d.items()} for k, d in out.items()}


def write_golden(ecosystem: str, name: str, spec: dict, make_optimizer, meta: dict,
                 leaves=None, eval_params=None) -> pathlib.Path:
    """Runs one variant in float32 and float64 on both problems and writes
    ``tests/reference/<ecosystem>_<name>.npz`` (layout: tests/reference/README.md).

    ``leaves(problem, init) -> init`` may restrict a problem's params (an optimizer that
    takes matrices only, say; a problem left with no leaf is skipped); ``meta`` is
    stored with ``spec``, the steps and the learning-rate rule added.
    """
    torch.use_deterministic_algorithms(True)
    lrs = learning_rates(spec)
    arrays = {"lrs": lrs, "steps": np.asarray(RECORDED, np.int32)}
    for dname, dtype in DTYPES.items():
        torch.set_default_dtype(dtype)
        for pname, (init, loss_fn) in problems().items():
            init = leaves(pname, init) if leaves else init
            if not init:
                continue
            traj = run(make_optimizer, dtype, init, loss_fn, lrs, eval_params)
            for leaf, d in traj.items():
                prefix = f"{dname}/{pname}/{leaf}"
                arrays[f"{prefix}/init"] = np.asarray(init[leaf], d["grads"].dtype)
                for kind, values in d.items():
                    arrays[f"{prefix}/{kind}"] = values
    torch.set_default_dtype(torch.float32)
    meta = {
        **meta,
        "variant": name,
        "spec": spec,
        "steps": STEPS,
        "lr_rule": "param_groups[*]['lr'] = lrs[k] before step k (k = 0-based)",
    }
    return save_golden(f"{ecosystem}_{name}.npz", arrays, meta)


def keras_trajectories(spec: dict, make_optimizer, extra=None) -> dict:
    """The arrays of a golden (layout as :func:`write_golden`) for a Keras optimizer.

    Keras on the JAX backend with x64 enabled, in float32 and float64, on both problems;
    the gradients are torch's at the current params; ``optimizer.learning_rate`` is
    assigned ``lrs[k]`` before step ``k``. ``make_optimizer(lr)`` builds the optimizer;
    ``extra(optimizer, variable, dtype_name)``, when given, is recorded as ``eval``.
    """
    import jax
    import keras

    jax.config.update("jax_enable_x64", True)
    lrs = learning_rates(spec)
    arrays = {"lrs": lrs, "steps": np.asarray(RECORDED, np.int32)}
    kinds = ("grads", "params", "eval") if extra else ("grads", "params")
    for dname, tdtype in DTYPES.items():
        keras.config.set_floatx(dname)
        torch.set_default_dtype(tdtype)
        for pname, (init, loss_fn) in problems().items():
            ws = {k: keras.Variable(np.asarray(v, dname), dtype=dname, name=k)
                  for k, v in init.items()}
            opt = make_optimizer(float(lrs[0]))
            opt.build(list(ws.values()))
            out = {k: {kind: [] for kind in kinds} for k in ws}
            for step in range(1, STEPS + 1):
                opt.learning_rate = float(lrs[step - 1])
                tp = {
                    k: torch.tensor(np.asarray(w.numpy()), dtype=tdtype).requires_grad_(True)
                    for k, w in ws.items()
                }
                loss_fn(tp, lambda a, _d=tdtype: torch.tensor(a, dtype=_d)).backward()
                grads = {k: tp[k].grad.numpy().copy() for k in ws}
                opt.apply_gradients([(grads[k], ws[k]) for k in ws])
                for k in ws:
                    out[k]["grads"].append(grads[k])
                if step in RECORDED:
                    for k, w in ws.items():
                        out[k]["params"].append(np.asarray(w.numpy()).copy())
                        if extra:
                            out[k]["eval"].append(extra(opt, w, dname))
            for k, d in out.items():
                arrays[f"{dname}/{pname}/{k}/init"] = np.asarray(init[k], dname)
                for kind, values in d.items():
                    arrays[f"{dname}/{pname}/{k}/{kind}"] = np.stack(values).astype(dname)
    keras.config.set_floatx("float32")
    torch.set_default_dtype(torch.float32)
    return arrays


def save_golden(filename: str, arrays: dict, meta: dict) -> pathlib.Path:
    """Writes ``arrays`` and ``meta`` (JSON, key ``"meta"``) to ``tests/reference/<filename>``."""
    arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))
    path = OUT / filename
    np.savez_compressed(path, **arrays)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def torch_optim(name: str, **kwargs):
    """``make_optimizer`` for ``torch.optim.<name>(params, lr, foreach=False, **kwargs)``."""
    return lambda params, lr: getattr(torch.optim, name)(params, lr=lr, foreach=False, **kwargs)


def write_torch_goldens(variants: dict, command: str) -> None:
    """Writes ``torch_<variant>.npz`` for each of ``variants``.

    A variant is ``{"spec": ..., "torch": (torch.optim class name, its kwargs)}``.
    """
    total = 0
    for vname, variant in variants.items():
        name, kwargs = variant["torch"]
        meta = {
            "torch_version": torch.__version__,
            "command": command,
            "optimizer": f"torch.optim.{name}",
            "kwargs": {**kwargs, "foreach": False},
        }
        path = write_golden("torch", vname, variant["spec"], torch_optim(name, **kwargs), meta)
        total += path.stat().st_size
    print(f"total {total / 1024:.0f} KiB, torch {torch.__version__}")


def main() -> None:
    write_torch_goldens(VARIANTS, COMMAND)


if __name__ == "__main__":
    main()
