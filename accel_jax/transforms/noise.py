"""Gradient noise (Neelakantan et al., 2015)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformation, as_array_leaf
from accel_jax.hyperparams import float_dtype, increment


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`: the step count and the random key."""

    count: jax.Array  # int32
    rng_key: jax.Array


def _as_key(key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.key(key)


def add_noise(eta: float, gamma: float, key: Any = None, *, seed: int | None = None
              ) -> GradientTransformation:
    """Adds annealed Gaussian noise to the updates::

        u_t <- u_t + sigma_t * N(0, 1),     sigma_t^2 = eta / t**gamma   (t = 1, 2, ...)

    ``key`` is a JAX key or an int seed (``seed`` is optax's deprecated name for
    it). Each step splits the key as optax does, one normal draw per leaf.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.add_noise(0.01, 0.55, key=0)
    >>> u, s = tx.update(jnp.zeros(3), tx.init(jnp.zeros(3)))
    >>> u.shape, int(s.count)
    ((3,), 1)

    Reference: Neelakantan et al., "Adding Gradient Noise Improves Learning for
    Very Deep Networks", 2015.
    """
    v.check_number("eta", eta, lo=0.0)
    v.check_number("gamma", gamma, lo=0.0)
    if seed is not None:
        if key is not None:
            raise ValueError("add_noise: give key or seed, not both.")
        key = seed
    if key is None:
        warnings.warn("add_noise: no key given, using key=0.", stacklevel=2)
        key = 0

    def init_fn(params):
        del params
        return AddNoiseState(jnp.zeros([], jnp.int32), _as_key(key))

    def update_fn(updates, state, params=None):
        del params
        count = increment(state.count)
        sigma = jnp.sqrt(eta / count.astype(float_dtype()) ** gamma)
        rng_key, sample_key = jax.random.split(state.rng_key)
        leaves, treedef = jax.tree.flatten(updates)
        leaves = [as_array_leaf(g) for g in leaves]
        keys = jax.random.split(sample_key, len(leaves)) if leaves else []
        noisy = [
            g + sigma.astype(g.dtype) * jax.random.normal(k, g.shape, g.dtype)
            for g, k in zip(leaves, keys, strict=True)
        ]
        return jax.tree.unflatten(treedef, noisy), AddNoiseState(count, rng_key)

    return GradientTransformation(init_fn, update_fn)
