"""Numerical conformance of the seed optimizers: every optimizer x ecosystem cell of
docs/conformance.md (optax live, torch.optim goldens, Keras 3 formulas in NumPy).

The replay machinery is in tests/conformance.py; the frontier optimizers' cells are
in their own test modules (tests/test_conformance_*.py and the family tests).
"""

from __future__ import annotations

import dataclasses
import itertools

import optax
import pytest

from tests import conformance as c
from tests import reference_keras as keras
from tests.conformance import ECOSYSTEMS, PROBLEMS

_variant = c.variant

# At least one variant per optimizer has a changing learning rate (``decay``).
VARIANTS = [
    _variant("sgd", "plain", lr=0.01),
    _variant("sgd", "momentum", lr=0.01, decay=0.98, momentum=0.9),
    _variant("sgd", "nesterov", lr=0.01, decay=0.98, momentum=0.9, nesterov=True),
    _variant("sgd", "weight_decay", lr=0.01, weight_decay=0.1),
    _variant("sgd", "momentum_weight_decay", lr=0.01, decay=0.98, momentum=0.9,
             weight_decay=0.1),
    _variant("adagrad", "default", lr=0.1, decay=0.98),
    _variant("rmsprop", "plain", lr=0.01),
    _variant("rmsprop", "centered", lr=0.01, centered=True),
    _variant("rmsprop", "momentum", lr=0.01, decay=0.98, momentum=0.9),
    _variant("rmsprop", "centered_momentum", lr=0.01, decay=0.98, centered=True, momentum=0.9),
    _variant("adam", "plain", lr=0.02),
    _variant("adam", "amsgrad", lr=0.02, decay=0.98, amsgrad=True),
    _variant("adamw", "default", lr=0.02, decay=0.98),
    _variant("adamax", "default", lr=0.02, decay=0.98),
    _variant("nadam", "default", lr=0.02, decay=0.98),
]
c.register(VARIANTS)

# Ecosystems whose defaults give the same trajectory for a variant (the others differ).
SAME_TRAJECTORY = {
    "sgd_plain": [("optax", "torch", "keras")],
    "sgd_momentum": [("optax", "torch")],
    "sgd_nesterov": [("optax", "torch")],
    # without momentum, coupled L2 and decoupled decay are the same step
    "sgd_weight_decay": [("optax", "torch", "keras")],
    "sgd_momentum_weight_decay": [("optax", "torch")],
    "adagrad_default": [("optax", "keras")],
    "adam_plain": [("optax", "torch")],
    "adamax_default": [("optax", "torch")],
}


def _optax_reference(v: c.Variant, lr):
    k = v.kwargs
    if v.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=k.get("momentum"), nesterov=k.get("nesterov", False))
        if "weight_decay" in k:  # optax's L2: the decay added to the gradient, first
            tx = optax.chain(optax.add_decayed_weights(k["weight_decay"]), tx)
        return tx
    if v.optimizer == "rmsprop":
        return optax.rmsprop(lr, centered=k.get("centered", False), momentum=k.get("momentum"))
    if v.optimizer == "adam" and k.get("amsgrad"):
        return optax.amsgrad(lr)
    assert not k, k
    return getattr(optax, v.optimizer)(lr)


for _name in ("sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam"):
    c.OPTAX[_name] = _optax_reference

KERAS = {
    "sgd": keras.SGD, "adagrad": keras.Adagrad, "rmsprop": keras.RMSprop, "adam": keras.Adam,
    "adamw": keras.AdamW, "adamax": keras.Adamax, "nadam": keras.Nadam,
}


for _name, _cls in KERAS.items():
    c.NUMPY[("keras", _name)] = _cls

CELLS = c.cells(VARIANTS)


@pytest.mark.parametrize("variant_id, ecosystem, problem, dtype", CELLS)
def test_matches_reference(request, variant_id, ecosystem, problem, dtype):
    """The cell's accel_jax call reproduces the ecosystem's trajectory, step by step."""
    c.check_cell(request, variant_id, ecosystem, problem, dtype)


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS])
def test_each_convention_difference_is_visible(x64, variant_id):
    """The problems exercise every convention: where two ecosystems' defaults differ,
    accel_jax with one convention misses the other's torch-fed trajectory by far more
    than the float64 tolerance (so a wrong convention cannot pass), and where they
    coincide it matches. Fed torch's float64 gradients."""
    ref = c.reference(variant_id, "torch", "float64")
    ours = {e: c.ours(variant_id, e, "float64", "torch") for e in ECOSYSTEMS}
    same = {frozenset(p) for group in SAME_TRAJECTORY.get(variant_id, [])
            for p in itertools.combinations(group, 2)}
    for a, b in itertools.combinations(ECOSYSTEMS, 2):
        traj_b = dataclasses.replace(ref, params=ours[b])
        worst = max(
            r.max() for problem in PROBLEMS
            for r in c.excess(ours[a], traj_b, problem, "float64").values()
        )
        if frozenset((a, b)) in same:
            assert worst <= 1, f"{variant_id}: {a} and {b} should coincide ({worst:.3g})"
        else:
            assert worst > 1e3, f"{variant_id}: {a} vs {b} differ only {worst:.3g} x tol"


@pytest.mark.parametrize("variant_id", [v.id for v in VARIANTS])
def test_torch_goldens_match_the_registry(variant_id):
    """Each golden file was made for this variant, these rates and these problems."""
    meta = c.check_golden_meta(variant_id, "torch")
    assert meta["torch_version"].startswith("2.")


def test_docs_list_every_cell():
    """docs/conformance.md gives the exact accel_jax call of every tested cell."""
    missing = c.missing_from_docs(VARIANTS)
    assert not missing, f"docs/conformance.md lacks: {missing}"
