"""Adafactor: a factored second moment, update clipping and relative step sizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    compute_dtype,
    leafwise,
    needs_params_tree,
    params_tree_reason,
    require_params,
)
from accel_jax.combine import chain, mask_flags
from accel_jax.hyperparams import current_hyperparams, increment, init_state
from accel_jax.optimizers._conventions import UNSET, settings
from accel_jax.transforms.factored import (
    block_rms,
    clip_by_block_rms,
    decay_rate_pow,
    decay_rate_pow_float32,
    scale_by_factored_rms,
    scale_by_param_block_rms,
    scale_by_relative_step,
)
from accel_jax.transforms.momentum import ema
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale, scale_by_learning_rate

_TABLE = """
    ==============================  =========  ============  ============
    argument                        optax      torch         keras
    ==============================  =========  ============  ============
    ``learning_rate`` (None)        none (1)   1e-2          1e-3
    ``min_dim_size_to_factor``      128        0             0
    ``eps``                         1e-30      None (dtype)  1e-30
    ``relative_step``               False      True          True
    ``factor_last_two_dims``        False      True          True
    ``eps_in_moment``               True       False         True
    ``lr_in_weight_decay``          False      True          True
    ``scale_after_weight_decay``    False      False         True
    ==============================  =========  ============  ============
"""


class _ParamScaleState(NamedTuple):
    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]


def _param_scale_after_decay(min_scale, learning_rate, weight_decay, mask):
    """``u <- max(rms(w'), min_scale) * u`` with ``w' = (1 - eta_t * lambda_t) w`` on the
    decayed leaves: Keras' Adafactor, whose base class decays the weights first."""
    specs = {"learning_rate": learning_rate, "weight_decay": weight_decay}

    init_fn = init_state(_ParamScaleState, specs)

    def update_fn(updates, state, params=None):
        require_params(params, "adafactor")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        flags = mask_flags(mask if mask is not None else True, params)
        shrink = 1 - hp["learning_rate"] * hp["weight_decay"]

        def rescale(u, w, decays):
            dt = compute_dtype(u, w)
            rms = block_rms(w.astype(dt)).astype(dt)
            if decays:
                rms = rms * jnp.abs(shrink.astype(dt))
            return (u.astype(dt) * jnp.maximum(rms, jnp.asarray(min_scale, dt))).astype(u.dtype)

        leaves, treedef = jax.tree.flatten(updates)
        out = [
            leafwise(rescale)(u, w, f)
            for u, w, f in zip(leaves, treedef.flatten_up_to(params), flags, strict=True)
        ]
        return jax.tree.unflatten(treedef, out), _ParamScaleState(increment(state.count), hp)

    return needs_params_tree(
        GradientTransformation(init_fn, update_fn), "adafactor: scales each leaf by its RMS"
    )


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int | None = None,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: Any = UNSET,
    factored: bool = True,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    *,
    min_scale: float = 1e-3,
    relative_step: bool | None = None,
    factor_last_two_dims: bool | None = None,
    eps_in_moment: bool | None = None,
    lr_in_weight_decay: bool | None = None,
    scale_after_weight_decay: bool | None = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Adafactor (optax's arguments; torch.optim's and Keras' with ``convention=``)::

        u_t = g_t / sqrt(V_t)            (V_t factored for matrices: scale_by_factored_rms,
                                          decay rho_t = 1 - t^(-decay_rate))
        u_t <- u_t / max(1, rms(u_t) / clipping_threshold)
        u_t <- a_t * u_t,  a_t = eta_t  or  min(eta_t, 1/sqrt(t))     (relative_step)
        u_t <- max(rms(w), min_scale) * u_t                  (multiply_by_parameter_scale)
        u_t <- momentum * u_{t-1} + (1 - momentum) * u_t     (momentum given; optax only)
        w <- w - u_t - lambda * w        (lr_in_weight_decay=False: optax)
        w <- w - u_t - eta_t * lambda * w                (True: torch.optim, Keras)

    ``lambda`` is ``weight_decay_rate``; ``weight_decay_mask`` selects the leaves
    that decay. ``scale_after_weight_decay=True`` (Keras) takes ``rms(w)`` of the
    already decayed weights. ``learning_rate=None`` is the convention's default
    (optax: no scaling at all). A 2-D (or larger) leaf stores ``n + m`` second-moment
    values instead of ``n * m`` (see ``benchmarks/RESULTS.md``: GPT-2-small's state).
    Flat params (:func:`accel_jax.flatten_params`) are not supported (nothing can
    be factored in a 1-D buffer and the block scalings would span the whole model).
    Defaults per ``convention`` (``eps`` None: the machine epsilon of each leaf's dtype):
    {table}
    ``docs/conformance.md`` lists the remaining differences (update clipping and
    relative steps agree; torch.optim's ``eps`` bounds the estimate instead of
    entering the moment; optax computes the decay ``rho_t`` in float32).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adafactor(0.1)
    >>> params = {"w": jnp.full(4, 2.0)}
    >>> updates, _ = tx.update({"w": jnp.ones(4)}, tx.init(params), params)
    >>> [round(float(x), 4) for x in updates["w"]]       # -0.1 * rms(w) * sign(g)
    [-0.2, -0.2, -0.2, -0.2]

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost", ICML 2018.
    """
    s = settings(
        "adafactor", convention, learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor, eps=eps, relative_step=relative_step,
        factor_last_two_dims=factor_last_two_dims, eps_in_moment=eps_in_moment,
        lr_in_weight_decay=lr_in_weight_decay, scale_after_weight_decay=scale_after_weight_decay,
    )
    v.check_flags(
        multiply_by_parameter_scale=multiply_by_parameter_scale, factored=factored,
        **{k: s[k] for k in ("relative_step", "factor_last_two_dims", "eps_in_moment",
                             "lr_in_weight_decay", "scale_after_weight_decay")},
    )
    v.check_number("min_scale", min_scale, lo=0.0)
    lr = s["learning_rate"]
    if lr is not None:
        v.check_rate("learning_rate", lr)
    if clipping_threshold is not None:
        v.check_number("clipping_threshold", clipping_threshold, lo=1.0)
    if momentum is not None:
        v.check_decay("momentum", momentum)
    if weight_decay_rate is not None:
        v.check_number("weight_decay_rate", weight_decay_rate, lo=0.0, allow_schedule=True)
    if s["lr_in_weight_decay"] and weight_decay_rate is not None and lr is None:
        raise ValueError("lr_in_weight_decay=True needs a learning_rate, got None.")
    decay_fn = decay_rate_pow_float32 if convention == "optax" else decay_rate_pow
    tx = [
        scale_by_factored_rms(
            factored, decay_rate, decay_offset, s["min_dim_size_to_factor"], s["eps"], decay_fn,
            factor_last_two_dims=s["factor_last_two_dims"], eps_in_moment=s["eps_in_moment"],
            nu_dtype=nu_dtype,
        )
    ]
    if clipping_threshold is not None:
        tx.append(clip_by_block_rms(clipping_threshold))
    if lr is not None:
        step = scale_by_relative_step if s["relative_step"] else scale_by_learning_rate
        tx.append(step(lr) if s["relative_step"] else step(lr, flip_sign=False))
    decays = weight_decay_rate is not None
    if multiply_by_parameter_scale:
        if decays and s["scale_after_weight_decay"]:
            tx.append(
                _param_scale_after_decay(min_scale, lr, weight_decay_rate, weight_decay_mask)
            )
        else:
            tx.append(scale_by_param_block_rms(min_scale))
    if momentum is not None:
        tx.append(ema(momentum, debias=False, mu_dtype=dtype_momentum))
    if decays and not s["lr_in_weight_decay"]:
        tx.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    tx.append(scale(-1.0))
    if decays and s["lr_in_weight_decay"]:
        tx.append(add_decayed_weights(weight_decay_rate, weight_decay_mask, learning_rate=lr))
    tx = chain(*tx)
    reason = params_tree_reason(tx)  # none when nothing factors, clips or scales per leaf
    return tx if reason is None else needs_params_tree(tx, f"adafactor ({reason})")


adafactor.__doc__ = adafactor.__doc__.replace("{table}", _TABLE)
