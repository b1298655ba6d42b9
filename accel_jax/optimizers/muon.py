"""Muon: momentum orthogonalized by Newton–Schulz on matrices, AdamW on every other leaf."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule, needs_params_tree
from accel_jax.combine import chain, partition, path_labels
from accel_jax.optimizers._conventions import DEFAULTS, settings
from accel_jax.transforms.adam import scale_by_adam, scale_by_nadam
from accel_jax.transforms.orthogonal import (
    MuonDimensionNumbers,
    leaf_dimension_numbers,
    scale_by_muon,
)
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate
from accel_jax.transforms.shape_scaling import scale_by_shape

DEFAULTS["muon"] = {
    "optax": {
        "eps": 1e-8, "weight_decay": 0.0, "adam_weight_decay": 0.0, "adam_eps": None,
        "adam_nesterov": None, "adjust_lr_fn": "original", "momentum_form": "debiased",
        "eps_mode": "add", "exclude_embeddings": False, "keras_adam": False,
        "dimension_numbers": MuonDimensionNumbers(0, 1), "norm_dtype": None,
    },
    "torch": {
        "eps": 1e-7, "weight_decay": 0.1, "adam_weight_decay": 1e-2, "adam_eps": 1e-8,
        "adam_nesterov": False, "adjust_lr_fn": "original", "momentum_form": "ema",
        "eps_mode": "max", "exclude_embeddings": False, "keras_adam": False,
        "dimension_numbers": MuonDimensionNumbers(1, 0), "norm_dtype": None,
    },
    "keras": {
        "eps": 1e-7, "weight_decay": 4e-3, "adam_weight_decay": 4e-3, "adam_eps": None,
        "adam_nesterov": False, "adjust_lr_fn": "match_rms_adamw", "momentum_form": "sum",
        "eps_mode": "add", "exclude_embeddings": True, "keras_adam": True,
        "dimension_numbers": MuonDimensionNumbers(0, 1), "norm_dtype": "float32",
    },
}

_MUON_TABLE = """
    =================================  ==============  ==============  ===============
    argument                           optax           torch           keras
    =================================  ==============  ==============  ===============
    ``eps`` (NS, and Adam's)           1e-8            1e-7            1e-7
    ``eps_mode``                       "add"           "max"           "add"
    ``momentum_form``                  "debiased"      "ema"           "sum"
    ``adjust_lr_fn``                   "original"      "original"      "match_rms_adamw"
    matrix layout (dimension numbers)  (0, 1) (in,out) (1, 0) (out,in) (0, 1)
    ``weight_decay``                   0.0             0.1             0.004
    ``adam_weight_decay``              0.0             0.01            0.004
    ``adam_eps``                       = ``eps``       1e-8            = ``eps`` (hat)
    ``adam_nesterov``                  = ``nesterov``  False           False
    ``exclude_embeddings``             False           False           True
    ``norm_dtype``                     (NS dtype)      (NS dtype)      float32
    =================================  ==============  ==============  ===============
"""


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Any = "standard",
    ns_steps: int = 5,
    beta: ScalarOrSchedule = 0.95,
    eps: float | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: ScalarOrSchedule = 0.9,
    adam_b2: ScalarOrSchedule = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: ScalarOrSchedule | None = None,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    adjust_lr_fn: str | None = None,
    adam_eps: float | None = None,
    adam_nesterov: bool | None = None,
    momentum_form: str | None = None,
    eps_mode: str | None = None,
    ns_dtype: Any = None,
    norm_dtype: Any = None,
    exclude_layers: Sequence[str] = (),
    exclude_embeddings: bool | None = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Muon (optax.contrib.muon's arguments): orthogonalized momentum on the matrices::

        M_t = momentum of g (Nesterov by default, ``momentum_form`` below)
        O_t = NS(M_t)                     (Newton-Schulz, ``ns_steps`` x ``ns_coeffs``)
        W  <- W - eta_t * (s * O_t + lambda * W),    s = shape factor (``adjust_lr_fn``)

    and AdamW on every other leaf (``adam_*`` arguments, ``adam_learning_rate``
    defaulting to ``learning_rate``; Nesterov Adam, i.e. NAdamW, when
    ``adam_nesterov``), routed by :func:`accel_jax.partition`. The matrices are the
    rank-2 leaves, or those given :class:`accel_jax.MuonDimensionNumbers` by
    ``muon_weight_dimension_numbers`` (a tree of them, ``None`` for AdamW leaves, or
    a function of the params; higher-rank leaves such as convolutions are
    orthogonalized per the dimension numbers), minus the leaves whose
    ``/``-joined path matches a regex of ``exclude_layers`` or, with
    ``exclude_embeddings``, contains "embedding" (Keras' rules). Embeddings and the
    output head usually belong to AdamW: exclude them by path.

    * ``ns_coeffs``: a preset of :data:`accel_jax.NS_COEFFS_PRESETS` ("standard" =
      Keller Jordan's quintic (3.4445, -4.7750, 2.0315), "dion", "cubic"), one
      triple, or one triple per step; ``preconditioning``, ``adaptive`` as optax.
    * ``momentum_form``: "debiased" (optax: bias-corrected EMA), "ema" (torch:
      ``m = lerp(m, g, 1 - b)``, Nesterov ``lerp(g, m, b)``), "sum" (Keras:
      ``m = b m + g``, Nesterov ``g + b m``); see :func:`accel_jax.scale_by_muon`.
    * ``adjust_lr_fn``: the factor ``s``: "original" ``sqrt(max(1, fan_out/fan_in))``,
      "match_rms_adamw" ``consistent_rms * sqrt(max(fan_in, fan_out))`` (rate 0.2
      unless ``consistent_rms`` is given; giving ``consistent_rms`` selects it, as
      in optax), "none". torch.optim.Muon reads ``(fan_out, fan_in)`` from a torch
      weight ``(out, in)``, so ``convention="torch"`` uses dimension numbers
      ``(1, 0)`` for rank-2 leaves: the same arrays give torch's factors.
      ``get_hyperparams`` reports the rate used per matrix as
      ``"adjusted_learning_rate<path>"`` (:func:`accel_jax.scale_by_shape`).
    * ``eps_mode``: normalize by ``||M|| + eps`` ("add") or ``max(||M||, eps)``
      ("max", torch). ``ns_dtype``: the dtype of the Newton-Schulz iteration. The
      default is the update's dtype, at least float32, in every convention;
      torch.optim.Muon and Keller Jordan's code iterate in bfloat16 (pass
      ``ns_dtype=jnp.bfloat16`` for that; docs/conformance.md). ``norm_dtype``: the
      dtype of the normalizing norm (Keras computes it in float32 for any input).
    * Weight decay is decoupled and multiplied by the learning rate (not by ``s``),
      as in optax, torch and Keras; ``weight_decay_mask`` selects matrices that decay.

    Defaults per ``convention`` (torch: ``torch.optim.Muon`` on the matrices and
    ``torch.optim.AdamW`` on the rest, as torch's documentation pairs them; keras:
    ``keras.optimizers.Muon``):
    {table}
    State: the momentum (``mu_dtype``) per matrix, Adam's two moments per other leaf:
    about half of Adam's bytes on a model made of matrices. Flat params
    (:func:`accel_jax.flatten_params`) are not supported: a flat buffer has no
    matrix, so every leaf would go to AdamW. Sharded matrices work under
    ``jax.jit``: shard them along their long axis (one all-reduce of the Gram matrix
    per Newton-Schulz step; ``benchmarks/RESULTS.md``).

    >>> import jax, jax.numpy as jnp, accel_jax as aj
    >>> params = {"w": jnp.ones((3, 4)) / 4, "b": jnp.zeros(4)}
    >>> tx = aj.muon(0.02)
    >>> grads = {"w": jnp.eye(3, 4), "b": jnp.ones(4)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> hp = aj.get_hyperparams(state)      # the rate of "w": 0.02 * sqrt(4 / 3)
    >>> round(float(hp["adjusted_learning_rate['w']"]), 6)
    0.023094

    References: Jordan et al., "Muon: An optimizer for hidden layers in neural
    networks", 2024; Liu et al., "Muon is Scalable for LLM Training", 2025.
    """
    s = settings(
        "muon", convention, eps=eps, weight_decay=weight_decay,
        adam_weight_decay=adam_weight_decay, adam_eps=adam_eps, adam_nesterov=adam_nesterov,
        adjust_lr_fn=adjust_lr_fn, momentum_form=momentum_form, eps_mode=eps_mode,
        exclude_embeddings=exclude_embeddings, keras_adam=None, dimension_numbers=None,
        norm_dtype=norm_dtype,
    )
    if adjust_lr_fn is None and consistent_rms is not None:
        s["adjust_lr_fn"] = "match_rms_adamw"
    v.check_rate("learning_rate", learning_rate)
    v.check_flags(nesterov=nesterov, adaptive=adaptive)
    for name, flag in (("adam_nesterov", adam_nesterov), ("exclude_embeddings",
                                                          exclude_embeddings)):
        if flag is not None:
            v.check_bool(name, flag)
    v.check_decay("adam_b1", adam_b1)
    v.check_decay("adam_b2", adam_b2)
    v.check_eps("eps", s["eps"])
    if adam_eps is not None:
        v.check_eps("adam_eps", adam_eps)
    v.check_number("weight_decay", s["weight_decay"], lo=0.0, allow_schedule=True)
    v.check_number("adam_weight_decay", s["adam_weight_decay"], lo=0.0, allow_schedule=True)
    if adam_learning_rate is not None:
        v.check_rate("adam_learning_rate", adam_learning_rate)
    v.check_eps("adam_eps_root", adam_eps_root)
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    a_eps = s["eps"] if s["adam_eps"] is None else s["adam_eps"]
    a_nesterov = nesterov if s["adam_nesterov"] is None else s["adam_nesterov"]
    if isinstance(exclude_layers, str):
        raise ValueError(
            "exclude_layers must be a sequence of regex strings, got the string "
            f"{exclude_layers!r}."
        )
    for name in exclude_layers:
        if not isinstance(name, str):
            raise ValueError(f"exclude_layers must hold regex strings, got {name!r}.")
    excluded = [re.compile(name) for name in exclude_layers]
    given = muon_weight_dimension_numbers
    muon_dims = s["dimension_numbers"] if given is None else given

    def leaf_dims(tree):  # None: the convention's layout for rank-2 leaves, AdamW for others
        return leaf_dimension_numbers(given, tree, s["dimension_numbers"])

    def labels(params):
        is_none = lambda x: x is None
        flat, treedef = jax.tree.flatten(params, is_leaf=is_none)
        names = jax.tree.leaves(path_labels(lambda name, _: name)(params), is_leaf=is_none)
        dims = iter(leaf_dims(params))  # one per leaf that is not None
        out = []
        for name, x in zip(names, flat, strict=True):
            if x is None:
                out.append("adam")
                continue
            d = next(dims)
            trainable = jnp.issubdtype(getattr(x, "dtype", jnp.int32), jnp.inexact)
            skip = any(r.search(name) for r in excluded) or (
                s["exclude_embeddings"] and "embedding" in name.lower()
            )
            out.append("muon" if d is not None and trainable and not skip else "adam")
        return jax.tree.unflatten(treedef, out)

    muon_tx = chain(
        scale_by_muon(
            ns_coeffs, ns_steps, beta, s["eps"], mu_dtype, nesterov=nesterov, adaptive=adaptive,
            preconditioning=preconditioning, weight_dimension_numbers=muon_dims,
            momentum_form=s["momentum_form"], eps_mode=s["eps_mode"], ns_dtype=ns_dtype,
            norm_dtype=s["norm_dtype"],
        ),
        scale_by_shape(
            muon_dims, consistent_rms, adjust_lr_fn=s["adjust_lr_fn"],
            learning_rate=learning_rate,
        ),
        add_decayed_weights(s["weight_decay"], weight_decay_mask, learning_rate=learning_rate),
    )
    if a_nesterov:
        adam_scaling = scale_by_nadam(
            adam_b1, adam_b2, a_eps, adam_eps_root, momentum_decay=None, mu_dtype=mu_dtype
        )
    else:
        adam_scaling = scale_by_adam(
            adam_b1, adam_b2, a_eps, adam_eps_root,
            eps_before_bias_correction=s["keras_adam"], mu_dtype=mu_dtype,
        )
    if s["keras_adam"]:  # Keras decays with the main rate, before the step
        adam_tx = chain(
            adam_scaling, scale_by_learning_rate(adam_lr),
            add_decayed_weights(s["adam_weight_decay"], learning_rate=learning_rate),
        )
    else:
        adam_tx = chain(
            adam_scaling, add_decayed_weights(s["adam_weight_decay"]),
            scale_by_learning_rate(adam_lr),
        )
    return needs_params_tree(
        partition({"muon": muon_tx, "adam": adam_tx}, labels),
        "muon: orthogonalizes each matrix leaf and runs AdamW on the others",
    )


muon.__doc__ = muon.__doc__.replace("{table}", _MUON_TABLE)
