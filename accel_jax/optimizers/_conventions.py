"""Per-framework defaults: what ``convention=`` sets for every argument left unset."""

from __future__ import annotations

from typing import Any

from accel_jax import _validation as v

#: The frameworks whose defaults and conventions the optimizers' ``convention=`` reproduces.
CONVENTIONS = ("optax", "torch", "keras")

# Per optimizer, per framework: the defaults of the knobs that differ between them.
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sgd": {
        "optax": {"lr_in_momentum": False, "decoupled_weight_decay": False},
        "torch": {"lr_in_momentum": False, "decoupled_weight_decay": False},
        "keras": {"lr_in_momentum": True, "decoupled_weight_decay": True},
    },
    "adagrad": {
        "optax": {"initial_accumulator_value": 0.1, "eps": 1e-7, "eps_in_sqrt": True},
        "torch": {"initial_accumulator_value": 0.0, "eps": 1e-10, "eps_in_sqrt": False},
        "keras": {"initial_accumulator_value": 0.1, "eps": 1e-7, "eps_in_sqrt": True},
    },
    "rmsprop": {
        "optax": {"decay": 0.9, "eps": 1e-8, "eps_in_sqrt": True, "lr_in_momentum": True},
        "torch": {"decay": 0.99, "eps": 1e-8, "eps_in_sqrt": False, "lr_in_momentum": False},
        "keras": {"decay": 0.9, "eps": 1e-7, "eps_in_sqrt": True, "lr_in_momentum": True},
    },
    "adam": {
        "optax": {
            "eps": 1e-8, "eps_before_bias_correction": False, "amsgrad_max_of_corrected": True
        },
        "torch": {
            "eps": 1e-8, "eps_before_bias_correction": False, "amsgrad_max_of_corrected": False
        },
        "keras": {
            "eps": 1e-7, "eps_before_bias_correction": True, "amsgrad_max_of_corrected": False
        },
    },
    "adamax": {
        "optax": {"eps": 1e-8, "eps_in_max": True},
        "torch": {"eps": 1e-8, "eps_in_max": True},
        "keras": {"eps": 1e-7, "eps_in_max": False},
    },
    "nadam": {
        "optax": {"eps": 1e-8, "momentum_decay": None},
        "torch": {"eps": 1e-8, "momentum_decay": 0.004},
        "keras": {"eps": 1e-7, "momentum_decay": 1.0},
    },
}
DEFAULTS["adamw"] = {
    name: {**d, "weight_decay": wd}
    for (name, d), wd in zip(DEFAULTS["adam"].items(), (1e-4, 1e-2, 4e-3), strict=True)
}

UNSET = "unset"  # marks "not given" where None is a meaningful value
NONE_IS_A_VALUE = {"momentum_decay"}  # nadam: None means a constant momentum (optax)


def settings(optimizer: str, convention: str, **given: Any) -> dict[str, Any]:
    """The given arguments, with the framework's defaults for those left unset."""
    v.check_choice("convention", convention, tuple(DEFAULTS[optimizer]))
    defaults = DEFAULTS[optimizer][convention]
    def unset(k, val):
        return val is UNSET or (val is None and k not in NONE_IS_A_VALUE)

    return {k: (defaults[k] if unset(k, val) else val) for k, val in given.items()}

