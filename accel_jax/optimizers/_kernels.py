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
from accel_jax.transforms.quantized import QuantizedArray, _is_quantized

# ----------------------------------------------------------------- native kernels
# Each spec maps a chain built above onto its kernel in kernels/cpu_kernels.cc
# (used by apply_step / make_step; see accel_jax.fused). Scalars are read from
# the state the chain's own update returned, cast as its per-leaf code casts them.

_F32 = jnp.float32


def _lr(lr_state) -> jax.Array:
    return lr_state.hyperparams["learning_rate"].astype(_F32)


def with_adam_kernel(tx, s, eps_root, amsgrad, state_bits, *, decays=False, mask=None):
    """Registers the native step of chain(scale_by_adam[_8bit], [add_decayed_weights], lr)."""
    if amsgrad or state_bits not in (8, 32):
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

    if state_bits == 8:
        spec = _adam8_spec(scalars, weight_decays if decays else None)
    else:
        spec = KernelSpec(
            _adam_target,
            slots=lambda state: [state[0].mu, state[0].nu],
            with_slots=lambda state, t: (state[0]._replace(mu=t[0], nu=t[1]), *state[1:]),
            scalars=scalars,
            leaf_scalars=weight_decays if decays else None,
            takes=_adam_takes,
        )
    return register_kernel_step(tx, spec)


def _adam_takes(leaf, row):
    """float32 params and gradients with both moments float32 or both bfloat16."""
    p, g, m, v = row
    same = all(jnp.shape(x) == jnp.shape(leaf) for x in row)
    moments = {getattr(m, "dtype", None), getattr(v, "dtype", None)}
    floats = all(getattr(x, "dtype", None) == _F32 for x in (p, g))
    return same and floats and moments in ({jnp.dtype(_F32)}, {jnp.dtype(jnp.bfloat16)})


def _adam_target(columns):
    """The float32 kernel, or the bfloat16-moments one (an optimizer's moments share a dtype)."""
    dtypes = {x.dtype for x in columns[2]} | {x.dtype for x in columns[3]}
    if len(dtypes) != 1:  # mu_dtype=None over mixed float32 / bfloat16 params cannot reach here
        raise ValueError(f"adam kernel: moments of mixed dtypes {sorted(map(str, dtypes))}.")
    return "accel_jax_adam_bf16" if dtypes == {jnp.dtype(jnp.bfloat16)} else "accel_jax_adam_f32"


def _adam8_spec(adam_scalars, leaf_scalars):
    """8-bit Adam: the kernel's slots are the codes and scales of ``mu`` and ``nu``.

    Leaves with plain (small) moments appear as they are in both a codes and a
    scales column, and ``takes`` leaves them to the XLA path.
    """

    def part(tree, i):
        return jax.tree.map(lambda m: m[i] if _is_quantized(m) else m, tree, is_leaf=_is_quantized)

    def slots(state):
        adam = state[0]
        return [part(adam.mu, 0), part(adam.mu, 1), part(adam.nu, 0), part(adam.nu, 1)]

    def with_slots(state, t):
        def join(old, codes, scale):
            return QuantizedArray(codes, scale) if _is_quantized(old) else codes

        adam = state[0]
        mu = jax.tree.map(join, adam.mu, t[0], t[1], is_leaf=_is_quantized)
        nu = jax.tree.map(join, adam.nu, t[2], t[3], is_leaf=_is_quantized)
        return (adam._replace(mu=mu, nu=nu), *state[1:])

    def scalars(state):
        count = jax.lax.bitcast_convert_type(state[0].count.astype(jnp.int32), _F32)
        return jnp.concatenate([adam_scalars(state), count[None]])

    def takes(leaf, row):
        p, g, m_codes, m_scale, r_codes, r_scale = row
        return (
            all(getattr(x, "dtype", None) == _F32 for x in (p, g, m_scale, r_scale))
            and all(getattr(x, "dtype", None) == jnp.uint8 for x in (m_codes, r_codes))
            and jnp.shape(p) == jnp.shape(g) == jnp.shape(leaf)
            and jnp.ndim(m_codes) == 2
            and jnp.shape(m_codes) == jnp.shape(r_codes)
            and jnp.shape(m_scale) == jnp.shape(r_scale) == jnp.shape(m_codes)[:1]
        )

    return KernelSpec(
        "accel_jax_adam8_f32", slots, with_slots, scalars, leaf_scalars=leaf_scalars, takes=takes
    )


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


