"""Adafactor conformance: optax live, torch.optim.Adafactor goldens, Keras 3 in NumPy.

The machinery is tests/conformance.py. Small matrices need ``min_dim_size_to_factor=2``
(optax's default 128 would factor nothing here; torch.optim and Keras factor every
matrix). ``docs/conformance.md`` lists what differs between the frameworks.
"""

from __future__ import annotations

import dataclasses

import optax
import pytest

from tests import conformance as c
from tests import reference_keras_lamb_adafactor as keras

ALL = ("optax", "torch", "keras")
VARIANTS = [
    c.variant("adafactor", "default", ecosystems=ALL, lr=0.01, decay=0.98,
              min_dim_size_to_factor=2),
    c.variant("adafactor", "relative_step", ecosystems=ALL, lr=0.5, min_dim_size_to_factor=2),
    c.variant("adafactor", "weight_decay", ecosystems=ALL, lr=0.02, decay=0.98,
              min_dim_size_to_factor=2, weight_decay_rate=0.1),
    c.variant("adafactor", "decay_rate", ecosystems=ALL, lr=0.05, min_dim_size_to_factor=2,
              decay_rate=0.5, clipping_threshold=2.0),
    c.variant("adafactor", "momentum", ecosystems=("optax",), lr=0.01, decay=0.98,
              min_dim_size_to_factor=2, momentum=0.9, dtype_momentum=None),
]
c.register(VARIANTS)
c.OPTAX["adafactor"] = lambda v, lr: optax.adafactor(lr, **v.kwargs)
c.NUMPY[("keras", "adafactor")] = keras.Adafactor


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", c.cells(VARIANTS))
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    c.check_cell(request, variant_id, ecosystem, problem, dtype)


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS if "torch" in v.ecosystems])
def test_torch_goldens_match_the_registry(variant_id):
    meta = c.check_golden_meta(variant_id, "torch")
    assert meta["optimizer"] == "torch.optim.Adafactor"
    assert meta["torch_version"].startswith("2.")


def test_docs_list_every_cell():
    assert not c.missing_from_docs(VARIANTS)


# Which conventions give the same trajectory (fed torch's float64 gradients): torch and
# Keras differ only where Keras' weight decay shrinks w before rms(w) is taken.
SAME = {"adafactor_relative_step": {"torch", "keras"}, "adafactor_weight_decay": set()}


@pytest.mark.parametrize("variant_id", sorted(SAME))
def test_each_convention_difference_is_visible(x64, variant_id):
    """A wrong convention cannot pass: where the defaults differ, the trajectories miss
    each other by far more than the float64 tolerance (optax's absolute step and
    weight decay against torch's relative step and lr-scaled decay)."""
    ref = c.reference(variant_id, "torch", "float64")
    ours = {e: c.ours(variant_id, e, "float64", "torch") for e in ALL}
    for a, b in [("optax", "torch"), ("optax", "keras"), ("torch", "keras")]:
        other = dataclasses.replace(ref, params=ours[b])
        worst = max(
            r.max() for p in c.PROBLEMS for r in c.excess(ours[a], other, p, "float64").values()
        )
        if {a, b} <= SAME[variant_id]:
            assert worst <= 1, f"{variant_id}: {a} and {b} should coincide ({worst:.3g})"
        else:
            assert worst > 1e3, f"{variant_id}: {a} vs {b} differ only {worst:.3g} x tol"
