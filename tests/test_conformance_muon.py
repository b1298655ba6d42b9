"""Muon conformance: optax.contrib.muon live; torch.optim.Muon (+ AdamW on the non-matrix
leaves) and keras.optimizers.Muon goldens written by scripts/make_muon_goldens.py.
The machinery is tests/conformance.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from tests import conformance as c

ALL = ("optax", "torch", "keras")
VARIANTS = [
    c.variant("muon", "default", ecosystems=ALL, lr=0.02, decay=0.98),
    c.variant("muon", "plain", ecosystems=ALL, lr=0.02, beta=0.9, nesterov=False,
              weight_decay=0.0, adam_weight_decay=0.0, adjust_lr_fn="match_rms_adamw"),
]
c.register(VARIANTS)


def _optax_muon(v: c.Variant, lr):
    kwargs = dict(v.kwargs)
    if kwargs.pop("adjust_lr_fn", None) == "match_rms_adamw":
        kwargs["consistent_rms"] = 0.2
    return optax.contrib.muon(lr, **kwargs)


c.OPTAX["muon"] = _optax_muon


# Keras 3 computes Newton–Schulz's normalizing Frobenius norm in float32 even for float64
# input (``keras.ops.norm`` promotes with a Python float to float32); ``convention="keras"``
# does the same (``norm_dtype="float32"``), but a float32 sum's rounding depends on the
# summation order, which XLA picks per program: for the transposed (tall) ``mlp/w1`` the
# norm may differ by one float32 ulp (6e-8), which moves the step by ~1e-9. Those float64
# cells get an atol of 1e-8 x scale (the float32 cells are unaffected).
KERAS_FLOAT64_ATOL = 1e-8


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", c.cells(VARIANTS))
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    if not (ecosystem == "keras" and dtype == "float64"):
        c.check_cell(request, variant_id, ecosystem, problem, dtype)
        return
    request.getfixturevalue("x64")
    ref = c.reference(variant_id, ecosystem, dtype)
    mine = c.ours(variant_id, ecosystem, dtype, ecosystem)
    leaves = [k for k in ref.init if c.problem_of(k) == problem]
    scale = max(np.abs(ref.init[k]).max() for k in leaves)
    for k in leaves:
        err = np.abs(mine[k] - ref.params[k])
        bound = KERAS_FLOAT64_ATOL * scale + c.RTOL[dtype] * np.abs(ref.params[k])
        assert (err <= bound).all(), (k, float((err / bound).max()))


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS])
@pytest.mark.parametrize("ecosystem", ["torch", "keras"])
def test_goldens_match_the_registry(variant_id, ecosystem):
    meta = c.check_golden_meta(variant_id, ecosystem)
    if ecosystem == "torch":
        assert "param dtype" in meta["newton_schulz"]


def test_conventions_differ_visibly(x64):
    """Each convention's defaults matter: fed torch's float64 gradients, the optax and
    Keras conventions leave torch's trajectory by far more than the tolerance."""
    ref = c.reference("muon_default", "torch", "float64")
    for other in ("optax", "keras"):
        mine = c.ours("muon_default", other, "float64", "torch")
        worst = max(r.max() for r in c.excess(mine, ref, "mlp", "float64").values())
        assert worst > 1e3, (other, worst)


def test_torch_bfloat16_newton_schulz():
    """``ns_dtype=jnp.bfloat16`` reproduces torch.optim.Muon's own bfloat16 iteration (each
    addmm accumulated in float32 and rounded once): bit for bit but for a few entries one
    bfloat16 ulp apart; the float32 iteration is ~0.01 away."""
    with np.load(c.REFERENCE / "torch_muon_ns_bfloat16.npz") as data:
        cases = [(data[f"input_{i}"], data[f"output_{i}"]) for i in range(3)]
    for x, ref in cases:
        kw = dict(eps=1e-7, eps_mode="max")
        bf16 = np.asarray(aj.orthogonalize(jnp.asarray(x), ns_dtype=jnp.bfloat16, **kw))
        f32 = np.asarray(aj.orthogonalize(jnp.asarray(x), **kw))
        assert bf16.dtype == np.float32
        assert (bf16 == ref).mean() >= 0.99
        assert np.abs(bf16 - ref).max() <= 2.0**-8 * np.abs(ref).max()
        assert np.abs(f32 - ref).max() > 2 * 2.0**-8 * np.abs(ref).max()


def test_docs_list_every_cell():
    assert not c.missing_from_docs(VARIANTS)

