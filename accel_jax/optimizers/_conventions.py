"""Per-framework defaults: what ``convention=`` sets for every argument left unset."""

from __future__ import annotations

from typing import Any

from accel_jax import _validation as v
from accel_jax.base import is_zero_literal
from accel_jax.transforms.momentum import trace
from accel_jax.transforms.scaling import scale_by_learning_rate

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
# (radam / nadamw / adadelta / lion) -- torch.optim has no Lion, Keras no RAdam.
DEFAULTS["radam"] = {
    "optax": {"eps_before_bias_correction": False, "decoupled_weight_decay": False},
    "torch": {"eps_before_bias_correction": True, "decoupled_weight_decay": False},
}
DEFAULTS["nadamw"] = {  # torch.optim.NAdam(decoupled_weight_decay=True), keras Nadam
    name: {**d, "weight_decay": wd}
    for (name, d), wd in zip(DEFAULTS["nadam"].items(), (1e-4, 0.0, 0.0), strict=True)
}
DEFAULTS["adadelta"] = {
    "optax": {"rho": 0.9, "eps": 1e-6, "decoupled_weight_decay": False},
    "torch": {"rho": 0.9, "eps": 1e-6, "decoupled_weight_decay": False},
    "keras": {"rho": 0.95, "eps": 1e-7, "decoupled_weight_decay": True},
}
DEFAULTS["lion"] = {"optax": {"weight_decay": 1e-3}, "keras": {"weight_decay": 0.0}}

_SF = {  # schedule-free: warmup counting, lr read for the averaging weights, weight power
    "optax": {
        "weight_lr_power": 2.0, "warmup_counts_current_step": False, "weight_lr_at_next_step": True
    },
    "schedulefree": {
        "weight_lr_power": 2.0, "warmup_counts_current_step": True, "weight_lr_at_next_step": False
    },
    "keras": {
        "weight_lr_power": 0.0, "warmup_counts_current_step": True, "weight_lr_at_next_step": False
    },
}
DEFAULTS["schedule_free_adamw"] = _SF
DEFAULTS["schedule_free_sgd"] = {k: _SF[k] for k in ("optax", "schedulefree")}
# (adafactor, lamb, lars) -- torch.optim has no LAMB or LARS, Keras no LARS.
DEFAULTS["lamb"] = {
    "optax": {"eps": 1e-6, "weight_decay": 0.0, "weight_decay_in_trust_ratio": True},
    "keras": {"eps": 1e-7, "weight_decay": 0.0, "weight_decay_in_trust_ratio": False},
}
DEFAULTS["lars"] = {"optax": {}}
_AF = dict(relative_step=True, factor_last_two_dims=True, lr_in_weight_decay=True)
DEFAULTS["adafactor"] = {
    "optax": dict(
        learning_rate=None, min_dim_size_to_factor=128, eps=1e-30, relative_step=False,
        factor_last_two_dims=False, eps_in_moment=True, lr_in_weight_decay=False,
        scale_after_weight_decay=False,
    ),
    "torch": dict(
        _AF, learning_rate=1e-2, min_dim_size_to_factor=0, eps=None, eps_in_moment=False,
        scale_after_weight_decay=False,
    ),
    "keras": dict(
        _AF, learning_rate=1e-3, min_dim_size_to_factor=0, eps=1e-30, eps_in_moment=True,
        scale_after_weight_decay=True,
    ),
}

UNSET = "unset"  # marks "not given" where None is a meaningful value
NONE_IS_A_VALUE = {"momentum_decay"}  # nadam: None means a constant momentum (optax)


def settings(optimizer: str, convention: str, **given: Any) -> dict[str, Any]:
    """The given arguments, with the framework's defaults for those left unset."""
    v.check_choice("convention", convention, tuple(DEFAULTS[optimizer]))
    defaults = DEFAULTS[optimizer][convention]
    def unset(k, val):
        return val is UNSET or (val is None and k not in NONE_IS_A_VALUE)

    resolved = {k: (defaults[k] if unset(k, val) else val) for k, val in given.items()}
    for k, val in resolved.items():  # a formula switch is a bool ("False" is not False)
        if isinstance(defaults.get(k), bool):
            v.check_bool(k, val)
    return resolved


def uses_momentum(momentum: Any, nesterov: bool, convention: str) -> bool:
    """Whether sgd / rmsprop chain a momentum trace: a momentum is given, and not a literal
    0 outside optax (torch and Keras skip the buffer; optax keeps a zero trace).

    Decided from literals only: inject_hyperparams passes numbers as arrays.
    """
    use = momentum is not None and not (is_zero_literal(momentum) and convention != "optax")
    if nesterov and not use:
        raise ValueError(f"nesterov=True needs a momentum in (0, 1], got momentum={momentum!r}.")
    return use


def momentum_and_lr(
    momentum: Any, nesterov: bool, mu_dtype: Any, learning_rate: Any, lr_in_momentum: bool,
    use_momentum: bool,
) -> list:
    """``[trace, scale_by_learning_rate]``, or the other way round when the learning rate
    goes into the momentum buffer (``lr_in_momentum``, set per convention); no trace when
    ``use_momentum`` is False."""
    velocity = [trace(momentum, nesterov=nesterov, mu_dtype=mu_dtype)] if use_momentum else []
    lr = [scale_by_learning_rate(learning_rate)]
    return lr + velocity if lr_in_momentum else velocity + lr
