"""LAMB and LARS conformance: optax live; Keras 3's Lamb in NumPy (torch.optim has
neither; only optax ships LARS). The machinery is tests/conformance.py."""

from __future__ import annotations

import dataclasses

import optax
import pytest

from tests import conformance as c
from tests import reference_keras_lamb_adafactor as keras

VARIANTS = [
    c.variant("lamb", "default", ecosystems=("optax", "keras"), lr=0.02, decay=0.98),
    c.variant("lamb", "weight_decay", ecosystems=("optax", "keras"), lr=0.02, weight_decay=0.1),
    c.variant("lars", "default", ecosystems=("optax",), lr=2.0, decay=0.98),
    c.variant("lars", "nesterov_weight_decay", ecosystems=("optax",), lr=1.0, decay=0.98,
              weight_decay=0.01, trust_coefficient=0.01, eps=1e-8, nesterov=True),
]
c.register(VARIANTS)
c.OPTAX["lamb"] = lambda v, lr: optax.lamb(lr, **v.kwargs)
c.OPTAX["lars"] = lambda v, lr: optax.lars(lr, **v.kwargs)
c.NUMPY[("keras", "lamb")] = keras.Lamb


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", c.cells(VARIANTS))
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    c.check_cell(request, variant_id, ecosystem, problem, dtype)


def test_weight_decay_placement_is_visible(x64):
    """optax decays inside the trust ratio, Keras before it: the two trajectories (fed
    Keras' float64 gradients) differ by far more than the tolerance, so a wrong
    ``weight_decay_in_trust_ratio`` cannot pass."""
    ref = c.reference("lamb_weight_decay", "keras", "float64")
    mine = {e: c.ours("lamb_weight_decay", e, "float64", "keras") for e in ("optax", "keras")}
    other = dataclasses.replace(ref, params=mine["keras"])
    worst = max(
        r.max() for p in c.PROBLEMS for r in c.excess(mine["optax"], other, p, "float64").values()
    )
    assert worst > 1e3, worst


def test_docs_list_every_cell():
    assert not c.missing_from_docs(VARIANTS)
