"""Adam with 8-bit block-wise quantized moments (``adam(..., state_bits=8)``).

Both moments are stored in 8 bits per value with one float32 scale per block of
``block_size`` values (dynamic per-block scaling, as bitsandbytes does for
PyTorch), so the state takes about 2.03 bytes per parameter instead of 8
(0.25x with the default 256-value blocks).

The scheme (a documented simplification of bitsandbytes' dynamic map):

* the values of a block are divided by the block's absolute maximum and stored
  as IEEE-style 8-bit floats (``float8_e4m3fn``: sign, 4 exponent bits, 3
  mantissa bits, largest value 448), kept as ``uint8`` bit patterns so every
  checkpointing library handles them. Like bitsandbytes' dynamic map the code
  is exponent-based: a code step is at most 1/8 of the value whatever its
  magnitude, down to 1/200,000 of the block maximum;
* rounding is stochastic (up with probability the fraction of a code step, from a
  stateless hash of position and step: one hash per value, its high 16 bits for
  ``m``, its low 16 bits for ``sqrt(v)``), so the decoded moment is unbiased:
  Adam's ``v`` changes by 0.1% per step, far less than a code step, and
  round-to-nearest would freeze it;
* the first moment ``m`` is stored signed; the second moment is stored as its
  square root ``sqrt(v)`` (``v`` spans twice the orders of magnitude of the
  gradients, ``sqrt(v)`` the same as them), and squared when read back;
* each step decodes the moments, updates them in float32, computes the update
  from the float32 values and encodes the new moments (as bitsandbytes does);
* leaves with fewer than ``min_quantized_size`` values (4,096 by default, as
  bitsandbytes' ``min_8bit_size``), non-float leaves and complex leaves keep
  unquantized moments in the params' dtype: biases and norms cost little and are
  the most sensitive.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    ScalarOrSchedule,
    as_array_leaf,
    check_structure,
    compute_dtype,
    is_trainable,
    moment_leaf,
)
from accel_jax.hyperparams import current_hyperparams, increment, init_hyperparams
from accel_jax.transforms.adaptive import adam_direction_leaf, adam_eps, bias_correction

_CODE_MAX = 448.0  # largest finite float8_e4m3fn value
_MAX_CODE = 0x7E  # its code (0x7F is NaN)


class QuantizedArray(NamedTuple):
    """One quantized leaf: ``codes`` (uint8, ``[blocks, block_size]``) and per-block ``scale``.

    The value of ``codes[b, i]`` is ``float8(codes[b, i]) * scale[b] / 448``; the
    array is the first ``prod(shape)`` values, in C order.
    """

    codes: jax.Array  # uint8 [blocks, block_size]
    scale: jax.Array  # float32 [blocks]


class ScaleByAdam8bitState(NamedTuple):
    """State of :func:`scale_by_adam_8bit`: as Adam's, with quantized moments.

    ``mu`` and ``nu`` have the structure of the params, where each large float
    leaf is a :class:`QuantizedArray` (``nu`` holds ``sqrt(v)``) and each other
    leaf a plain array.
    """

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    mu: Any
    nu: Any


class _Leaf(NamedTuple):
    """One leaf's results inside ``update`` (never stored)."""

    update: Any
    mu: Any
    nu: Any


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def _check_quantized_sizes(updates: Any, mu: Any, block_size: int) -> None:
    """Raises ``ValueError`` naming the path where an update does not fit its quantized moment."""
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    for (path, g), m in zip(flat, jax.tree.leaves(mu, is_leaf=_is_quantized), strict=True):
        if _is_quantized(m) and hasattr(g, "size") and -(-g.size // block_size) != m.codes.shape[0]:
            raise ValueError(
                f"updates do not match the optimizer state (mu): at path "
                f"{jax.tree_util.keystr(path)} the update has shape {tuple(g.shape)} "
                f"({g.size} values) but the quantized moment holds {m.codes.shape[0]} blocks "
                f"of {block_size}."
            )


def _thresholds(shape: tuple[int, int], salt: jax.Array, field: int) -> jax.Array:
    """Stochastic rounding thresholds in [0, 2**20) (int32), one per element of ``shape``.

    A hash (murmur3's finaliser) of the position and ``salt`` (an int32 that
    changes every step): deterministic, stateless and cheap. One hash serves two
    encodings: ``field`` 0 takes its high 16 bits (``m``), 1 its low 16 bits
    (``sqrt(v)``), each as ``16 * k + 8`` in units of 2**-20 of a code step. Not of
    the value's bits: a last-bit difference in the value (another order of float
    operations, as in the native kernel ``accel_jax_adam8_f32``) then changes a code
    only when the fraction of a code step lies within that difference of the threshold.
    """
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) * jnp.uint32(shape[1])
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    h = (index * jnp.uint32(0x9E3779B9)) ^ (salt.astype(jnp.uint32) * jnp.uint32(0x632BE5AB))
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    t = (h >> 12) & 0xFFFF0 if field == 0 else (h << 4) & 0xFFFF0
    return (t | 8).astype(jnp.int32)


def quantize(
    x: jax.Array, block_size: int = 256, salt: Any = None, field: int = 0
) -> QuantizedArray:
    """Block-wise 8-bit encoding of ``x`` (any shape, real floating dtype).

    Each value is divided by its block's absolute maximum (mapped to 448) and
    rounded to a ``float8_e4m3fn`` code: to the nearest (half up) without
    ``salt``; with an int32 ``salt`` (Adam: the step count), stochastically (up
    with probability the fraction of a code step, to 2**-16, so the expected code
    is the value), which keeps a slowly changing moment from sticking at a code (an
    update smaller than half a code step would otherwise always round back to the
    old value). ``field`` (0 or 1) picks one of two independent thresholds per
    position and salt (Adam: 0 for ``m``, 1 for ``sqrt(v)``).
    """
    flat = x.astype(jnp.float32).reshape(-1)
    blocks = -(-flat.size // block_size)
    pad = blocks * block_size - flat.size
    if pad:
        flat = jnp.pad(flat, (0, pad))
    flat = flat.reshape(blocks, block_size)
    scale = jnp.max(jnp.abs(flat), axis=1)
    inv = jnp.where(scale > 0, _CODE_MAX / jnp.where(scale > 0, scale, 1.0), 0.0)
    y = flat * inv[:, None]
    a = jnp.minimum(jnp.abs(y), _CODE_MAX)
    # Positive float8_e4m3fn codes are consecutive integers in value order: the
    # code at or below ``a`` is the float32's exponent and top 3 mantissa bits
    # (re-biased), the fraction of a code step its 20 other bits. Below 2**-6 (the
    # subnormal codes, steps of 2**-9) ``a + 2**-6`` is read instead, less 8 codes.
    normal = a >= 2.0**-6
    bits = jax.lax.bitcast_convert_type(jnp.where(normal, a, a + 2.0**-6), jnp.uint32)
    code = (bits >> 20).astype(jnp.int32) - jnp.where(normal, 120 << 3, (120 << 3) + 8)
    frac = (bits & 0xFFFFF).astype(jnp.int32)
    up = frac >= 1 << 19 if salt is None else _thresholds(flat.shape, salt, field) < frac
    code = jnp.minimum(code + up.astype(jnp.int32), _MAX_CODE)  # NaN: 0x7E (scale NaN)
    code = jnp.where(y < 0, code | 0x80, code)
    return QuantizedArray(code.astype(jnp.uint8), scale)


def dequantize(q: QuantizedArray, shape: tuple[int, ...]) -> jax.Array:
    """The float32 array of ``shape`` that ``q`` encodes."""
    magnitude = (q.codes & 0x7F).astype(jnp.int32)
    normal = jax.lax.bitcast_convert_type(((magnitude + (120 << 3)) << 20).astype(jnp.uint32),
                                          jnp.float32)
    values = jnp.where(magnitude >= 8, normal, magnitude.astype(jnp.float32) * 2.0**-9)
    values = jnp.where(q.codes >= 0x80, -values, values)
    values = values * (q.scale / _CODE_MAX)[:, None]
    size = math.prod(shape)
    return values.reshape(-1)[:size].reshape(shape)


def scale_by_adam_8bit(
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    eps_before_bias_correction: bool = False,
    block_size: int = 256,
    min_quantized_size: int = 4096,
) -> GradientTransformation:
    """Adam's scaling (as :func:`accel_jax.scale_by_adam`) with 8-bit block-wise moments.

    ``block_size`` values share one float32 scale (their absolute maximum);
    leaves with fewer than ``min_quantized_size`` values keep unquantized
    moments. The update is computed in float32 from the moments before they are
    re-encoded. See the module docstring for the encoding.
    """
    v.check_decay("b1", b1)
    v.check_decay("b2", b2)
    v.check_eps("eps", eps)
    v.check_eps("eps_root", eps_root)
    v.check_flags(eps_before_bias_correction=eps_before_bias_correction)
    v.check_number("block_size", block_size, lo=1, integer=True)
    v.check_number("min_quantized_size", min_quantized_size, lo=0, integer=True)
    specs = {"b1": b1, "b2": b2}

    def quantizable(p) -> bool:
        return (
            is_trainable(p)
            and jnp.issubdtype(p.dtype, jnp.floating)
            and p.size >= max(min_quantized_size, 1)
        )

    def zeros(p):
        p = jnp.asarray(p)
        if quantizable(p):
            blocks = -(-p.size // block_size)
            return QuantizedArray(
                jnp.zeros((blocks, block_size), jnp.uint8), jnp.zeros((blocks,), jnp.float32)
            )
        return jnp.zeros(p.shape, p.dtype)

    def init_fn(params):
        return ScaleByAdam8bitState(
            jnp.zeros([], jnp.int32),
            init_hyperparams(**specs),
            jax.tree.map(zeros, params),
            jax.tree.map(zeros, params),
        )

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(as_array_leaf, updates)
        # Plain (small) moments are compared shape for shape; a quantized one by its blocks.
        placeholders = jax.tree.map(
            lambda m: 0 if _is_quantized(m) else m, state.mu, is_leaf=_is_quantized
        )
        check_structure(updates, placeholders, "the optimizer state (mu)")
        _check_quantized_sizes(updates, state.mu, block_size)
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        count = increment(state.count)
        bc1, bc2 = bias_correction(hp["b1"], count), bias_correction(hp["b2"], count)
        eps_eff = adam_eps(eps, bc2, eps_before_bias_correction)

        def leaf(g, m, r):
            if not is_trainable(g):
                return _Leaf(g, m, r)
            quantized = _is_quantized(m)
            dt = compute_dtype(g) if quantized else compute_dtype(g, m, r)
            if quantized:
                m_old = dequantize(m, g.shape)
                v_old = jnp.square(dequantize(r, g.shape))
            else:
                m_old, v_old = m.astype(dt), r.astype(dt)
            m_new = moment_leaf(g, m_old, hp["b1"], 1, dt)
            v_new = moment_leaf(g, v_old, hp["b2"], 2, dt)
            u = adam_direction_leaf(m_new, v_new, bc1, bc2, eps_root, eps_eff, dt).astype(g.dtype)
            if quantized:
                return _Leaf(
                    u,
                    quantize(m_new, block_size, salt=count, field=0),
                    quantize(jnp.sqrt(v_new), block_size, salt=count, field=1),
                )
            return _Leaf(u, m_new.astype(m.dtype), v_new.astype(r.dtype))

        results = jax.tree.map(leaf, updates, state.mu, state.nu, is_leaf=_is_quantized)
        treedef = jax.tree.structure(updates)
        parts = jax.tree.leaves(results, is_leaf=lambda x: isinstance(x, _Leaf))
        new_updates = jax.tree.unflatten(treedef, [p[0] for p in parts])
        mu = jax.tree.unflatten(treedef, [p[1] for p in parts])
        nu = jax.tree.unflatten(treedef, [p[2] for p in parts])
        return new_updates, ScaleByAdam8bitState(count, hp, mu, nu)

    return GradientTransformation(init_fn, update_fn)


def state_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a pytree (an optimizer state, say)."""
    return sum(
        x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")
    )


def adam_8bit_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits):
    """The scaling of ``adam``/``adamw`` for ``state_bits != 32`` (validates the options)."""
    v.check_choice("state_bits", state_bits, (8, 32))
    if amsgrad:
        raise ValueError("state_bits=8 does not support amsgrad=True; use state_bits=32.")
    if mu_dtype is not None or nu_dtype is not None:
        raise ValueError(
            "state_bits=8 quantizes both moments; mu_dtype and nu_dtype must be None "
            f"(got mu_dtype={mu_dtype!r}, nu_dtype={nu_dtype!r})."
        )
    return scale_by_adam_8bit(
        b1, b2, s["eps"], eps_root, eps_before_bias_correction=s["eps_before_bias_correction"]
    )
