"""Writes the Muon goldens: tests/reference/{torch,keras}_muon_*.npz and torch_muon_ns_bfloat16.npz.

Run from the repository root by a maintainer with torch and keras (JAX backend)
installed; neither is a test dependency (tests/test_conformance_muon.py reads the data)::

    python scripts/make_muon_goldens.py

Layout as ``scripts/make_torch_goldens.py`` (tests/reference/README.md). Each variant's
``spec`` is the one tests/test_conformance_muon.py declares.

* ``torch_muon_<name>.npz``: ``torch.optim.Muon`` on the rank-2 params (the MLP's
  ``w0``, ``w1``) and ``torch.optim.AdamW(foreach=False)`` on the others (biases, the
  quadratic's vector), as torch's documentation pairs them; both groups get
  ``lrs[k]`` before step ``k``. torch.optim.Muon runs Newton–Schulz in bfloat16
  whatever the param dtype; these trajectories are made with the iteration in the
  param's dtype instead (``_zeropower_via_newtonschulz`` replaced by a copy without
  the ``.bfloat16()`` cast, checked bit-identical to torch's on bfloat16 input), so
  that float32 and float64 runs can be compared to 1e-5 / 1e-10.
* ``torch_muon_ns_bfloat16.npz``: torch's unmodified bfloat16 iteration on three
  matrices (``input_<i>`` float32, ``output_<i>`` its result as float32), for the
  ``ns_dtype=jnp.bfloat16`` check.
* ``keras_muon_<name>.npz``: ``keras.optimizers.Muon`` (JAX backend, x64 enabled),
  ``optimizer.learning_rate`` assigned ``lrs[k]`` before step ``k``; gradients are
  torch's at the current params.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.make_torch_goldens import (  # noqa: E402
    STEPS,
    keras_trajectories,
    save_golden,
    write_golden,
)

COMMAND = "python scripts/make_muon_goldens.py"

# name -> (spec, ecosystems with goldens); ids are ``muon_<name>``.
VARIANTS = {
    "default": (dict(lr=0.02, decay=0.98), ("torch", "keras")),
    "plain": (
        dict(lr=0.02, beta=0.9, nesterov=False, weight_decay=0.0, adam_weight_decay=0.0,
             adjust_lr_fn="match_rms_adamw"),
        ("torch", "keras"),
    ),
}


def torch_kwargs(spec: dict) -> tuple[dict, dict]:
    """torch.optim.Muon's and torch.optim.AdamW's arguments besides ``lr``."""
    muon, adamw = {}, {}
    if "beta" in spec:
        muon["momentum"] = spec["beta"]
    for k in ("nesterov", "weight_decay", "adjust_lr_fn"):
        if k in spec:
            muon[k] = spec[k]
    if "adam_weight_decay" in spec:
        adamw["weight_decay"] = spec["adam_weight_decay"]
    return muon, adamw


def ns_in_input_dtype(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz without the cast to bfloat16."""
    a, b, c = ns_coefficients
    ortho_grad = grad.clone()
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


def check_copy_is_faithful() -> None:
    """On bfloat16 input the copy is bit-identical to torch's own iteration."""
    from torch.optim import _muon

    gen = torch.Generator().manual_seed(0)
    for shape in ((6, 12), (12, 3), (16, 16)):
        g = torch.randn(shape, generator=gen).bfloat16()
        coeffs = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
        ours = ns_in_input_dtype(g, coeffs, 5, _muon.EPS)
        theirs = _muon._zeropower_via_newtonschulz(g, coeffs, 5, _muon.EPS)
        assert torch.equal(ours, theirs), shape


@contextlib.contextmanager
def ns_in_param_dtype():
    from torch.optim import _muon

    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = ns_in_input_dtype
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


class MuonAndAdamW:
    """torch.optim.Muon on the rank-2 params, torch.optim.AdamW on the others."""

    def __init__(self, params, lr, muon_kwargs, adamw_kwargs):
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.optimizers = []
        if matrices:
            self.optimizers.append(torch.optim.Muon(matrices, lr=lr, **muon_kwargs))
        if others:
            self.optimizers.append(
                torch.optim.AdamW(others, lr=lr, foreach=False, **adamw_kwargs)
            )
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self):
        for o in self.optimizers:
            o.zero_grad()

    def step(self):
        for o in self.optimizers:
            o.step()


def torch_golden(name: str, spec: dict) -> pathlib.Path:
    muon_kwargs, adamw_kwargs = torch_kwargs(spec)
    meta = {
        "command": COMMAND,
        "torch_version": torch.__version__,
        "optimizer": "torch.optim.Muon (rank-2 params) + torch.optim.AdamW (others)",
        "kwargs": {"Muon": muon_kwargs, "AdamW": {**adamw_kwargs, "foreach": False}},
        "newton_schulz": "in the param dtype (torch's iteration without the bfloat16 cast)",
    }
    with ns_in_param_dtype():
        return write_golden(
            "torch", f"muon_{name}", spec,
            lambda params, lr: MuonAndAdamW(params, lr, muon_kwargs, adamw_kwargs), meta,
        )


def torch_bf16_golden() -> pathlib.Path:
    from torch.optim import _muon

    gen = torch.Generator().manual_seed(1)
    coeffs = (_muon.DEFAULT_A, _muon.DEFAULT_B, _muon.DEFAULT_C)
    arrays = {}
    for i, shape in enumerate(((6, 12), (12, 3), (32, 32))):
        x = torch.randn(shape, generator=gen)
        arrays[f"input_{i}"] = x.numpy()
        arrays[f"output_{i}"] = _muon._zeropower_via_newtonschulz(
            x, coeffs, _muon.DEFAULT_NS_STEPS, _muon.EPS
        ).float().numpy()
    return save_golden("torch_muon_ns_bfloat16.npz", arrays, {
        "command": COMMAND, "torch_version": torch.__version__,
        "function": "torch.optim._muon._zeropower_via_newtonschulz (bfloat16)",
        "ns_coefficients": coeffs, "ns_steps": _muon.DEFAULT_NS_STEPS, "eps": _muon.EPS,
    })


def keras_kwargs(spec: dict) -> dict:
    kw = {}
    if "beta" in spec:
        kw["momentum"] = spec["beta"]
    for k in ("nesterov", "weight_decay", "adam_weight_decay"):
        if k in spec:
            kw[k] = spec[k]
    if spec.get("adjust_lr_fn") == "none":
        kw["rms_rate"] = None
    return kw


def keras_golden(name: str, spec: dict) -> pathlib.Path:
    import keras

    kwargs = keras_kwargs(spec)
    arrays = keras_trajectories(
        spec, lambda lr: keras.optimizers.Muon(learning_rate=lr, **kwargs)
    )
    meta = {
        "command": COMMAND,
        "keras_version": keras.__version__,
        "keras_backend": "jax (jax_enable_x64)",
        "optimizer": "keras.optimizers.Muon",
        "kwargs": kwargs,
        "variant": f"muon_{name}",
        "spec": spec,
        "steps": STEPS,
        "lr_rule": "optimizer.learning_rate = lrs[k] before step k (k = 0-based)",
    }
    return save_golden(f"keras_muon_{name}.npz", arrays, meta)


def main() -> None:
    check_copy_is_faithful()
    for name, (spec, ecosystems) in VARIANTS.items():
        if "torch" in ecosystems:
            torch_golden(name, spec)
        if "keras" in ecosystems:
            keras_golden(name, spec)
    torch_bf16_golden()


if __name__ == "__main__":
    main()
