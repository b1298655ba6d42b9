"""Native-kernel specs of the named optimizers' chains (private; see accel_jax.fused)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from accel_jax.combine import mask_flags
from accel_jax.fused import KernelSpec, register_kernel_step
from accel_jax.hyperparams import float_dtype
from accel_jax.transforms.adaptive import (
    adam_eps,
    bias_correction,
)

# ----------------------------------------------------------------- native kernels
# Each spec maps a chain built above onto its kernel in kernels/cpu_kernels.cc
# (used by apply_step / make_step; see accel_jax.fused). Scalars are read from
# the state the chain's own update returned, cast as its per-leaf code casts them.

_F32 = jnp.float32


def _lr(lr_state) -> jax.Array:
    return lr_state.hyperparams["learning_rate"].astype(_F32)


def with_adam_kernel(tx, s, eps_root, amsgrad, state_bits, *, decays=False, mask=None):
    """Registers the native step of chain(scale_by_adam, [add_decayed_weights], lr)."""
    if amsgrad or state_bits != 32:
        return tx

    def scalars(state):
        adam = state[0]
        b1, b2 = adam.hyperparams["b1"], adam.hyperparams["b2"]
        bc1, bc2 = bias_correction(b1, adam.count), bias_correction(b2, adam.count)
        eps = adam_eps(s["eps"], bc2, s["eps_before_bias_correction"])
        b1, b2 = b1.astype(_F32), b2.astype(_F32)
        values = [b1, 1 - b1, b2, 1 - b2, bc1.astype(_F32), bc2.astype(_F32)]
        return jnp.stack([*values, jnp.asarray(eps_root, _F32), eps.astype(_F32), -_lr(state[-1])])

    def weight_decays(params, state):
        decay = getattr(state[1], "inner_state", state[1]).hyperparams["weight_decay"]
        flags = mask_flags(True if mask is None else mask, params)
        zero = jnp.zeros([], _F32)
        return [decay.astype(_F32) if flag else zero for flag in flags]

    spec = KernelSpec(
        "accel_jax_adam_f32",
        slots=lambda state: [state[0].mu, state[0].nu],
        with_slots=lambda state, t: (state[0]._replace(mu=t[0], nu=t[1]), *state[1:]),
        scalars=scalars,
        leaf_scalars=weight_decays if decays else None,
    )
    return register_kernel_step(tx, spec)


def with_momentum_kernel(tx, nesterov, lr_first):
    """Registers the native step of chain(trace, lr) or chain(lr, trace) (Keras' order)."""
    velocity = 1 if lr_first else 0

    def scalars(state):
        beta = state[velocity].hyperparams["momentum"].astype(_F32)
        neg_lr = -_lr(state[1 - velocity])
        one = jnp.ones([], _F32)
        a, c = (neg_lr, one) if lr_first else (one, neg_lr)
        return jnp.stack([beta, a, c, jnp.asarray(float(nesterov), _F32)])

    def with_slots(state, trees):
        new = list(state)
        new[velocity] = state[velocity]._replace(trace=trees[0])
        return tuple(new)

    spec = KernelSpec(
        "accel_jax_momentum_f32",
        slots=lambda state: [state[velocity].trace],
        with_slots=with_slots,
        scalars=scalars,
    )
    return register_kernel_step(tx, spec)


def with_rms_kernel(tx, decay, eps, eps_in_sqrt):
    """Registers the native step of chain(scale_by_rms, lr)."""

    def scalars(state):
        d = jnp.asarray(decay, float_dtype()).astype(_F32)
        e = jnp.asarray(eps, _F32)
        zero = jnp.zeros([], _F32)
        eps_root, eps_out = (e, zero) if eps_in_sqrt else (zero, e)
        return jnp.stack([d, 1 - d, eps_root, eps_out, -_lr(state[1])])

    spec = KernelSpec(
        "accel_jax_rms_f32",
        slots=lambda state: [state[0].nu],
        with_slots=lambda state, t: (state[0]._replace(nu=t[0]), *state[1:]),
        scalars=scalars,
    )
    return register_kernel_step(tx, spec)


