"""Layout: run a transformation on all params flattened into one vector."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
)
from accel_jax.combine import _call_update


def _concat(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([jnp.reshape(x, [-1]) for x in leaves]) if leaves else jnp.zeros([0])


def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """Runs ``inner`` on one vector holding every leaf (concatenated, flattened), and
    splits its output back into the updates' shapes (optax's ``flatten``). Faster for
    many small leaves; the leaves must share a dtype.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.flatten(aj.sgd(1.0))
    >>> p = {"a": jnp.ones(2), "b": jnp.ones((1, 1))}
    >>> u, s = tx.update(p, tx.init(p))
    >>> u["b"].tolist(), s[0].hyperparams["learning_rate"].shape
    ([[-1.0]], ())
    """

    v.check_transformation("inner", inner)

    def unflatten(like, flat):
        leaves, treedef = jax.tree.flatten(like)
        out, start = [], 0
        for leaf in leaves:
            size = math.prod(jnp.shape(leaf))
            out.append(jnp.reshape(flat[start:start + size], jnp.shape(leaf)))
            start += size
        return jax.tree.unflatten(treedef, out)

    def init_fn(params):
        return inner.init(_concat(params))

    def update_fn(updates, state, params=None, **extra_args):
        flat_params = None if params is None else _concat(params)
        flat, state = _call_update(inner, _concat(updates), state, flat_params, extra_args)
        return unflatten(updates, flat), state

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), inner)
