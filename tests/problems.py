"""Deterministic test problems shared by the test modules (and the golden-data script).

Defined in NumPy so that any framework (JAX here, torch in
``scripts/make_torch_goldens.py``) can rebuild exactly the same problem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rotated_quadratic(dim: int = 8, condition: float = 100.0, seed: int = 0) -> dict:
    """An ill-conditioned quadratic ``f(x) = 0.5 x^T A x - b^T x`` in a random rotation.

    Eigenvalues of ``A`` are log-spaced in ``[1, condition]``. Returns float64
    NumPy arrays ``A``, ``b`` and the starting point ``x0``.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eig = np.logspace(0.0, np.log10(condition), dim)
    a = (q * eig) @ q.T
    a = 0.5 * (a + a.T)
    return {"A": a, "b": rng.normal(size=dim), "x0": rng.normal(size=dim) * 3.0}


def quadratic_loss(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    x = params["x"]
    return 0.5 * x @ (a @ x) - b @ x


def small_mlp(sizes: tuple = (6, 12, 3), n: int = 32, seed: int = 0) -> dict:
    """A tanh MLP regression problem: params ``w0, b0, w1, b1`` and data ``X, Y`` (float64)."""
    rng = np.random.default_rng(seed)
    d_in, d_hidden, d_out = sizes
    return {
        "w0": rng.normal(size=(d_in, d_hidden)) / np.sqrt(d_in),
        "b0": np.zeros(d_hidden),
        "w1": rng.normal(size=(d_hidden, d_out)) / np.sqrt(d_hidden),
        "b1": np.zeros(d_out),
        "X": rng.normal(size=(n, d_in)),
        "Y": rng.normal(size=(n, d_out)),
    }


MLP_PARAM_NAMES = ("w0", "b0", "w1", "b1")


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of ``tanh(x @ w0 + b0) @ w1 + b1`` against ``y``."""
    h = jnp.tanh(x @ params["w0"] + params["b0"])
    out = h @ params["w1"] + params["b1"]
    return jnp.mean((out - y) ** 2)


def as_params(problem: dict, names, dtype) -> dict:
    return {k: jnp.asarray(problem[k], dtype) for k in names}


def layer_like_params() -> dict:
    """A small params tree shaped like a model's: a kernel, a bias, an embedding, a scalar."""
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (80, 64)), "bias": jnp.zeros(64)},
        "emb": jax.random.normal(k[1], (5000,)),
        "scale": jnp.ones(()),
    }


def random_grads(params, i: int, scale: float = 1.0):
    """Step ``i``'s gradients: ``scale`` x standard normal per float leaf, ``float0`` otherwise."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(100 + i), len(leaves))
    out = []
    for key, p in zip(keys, leaves, strict=True):
        if jnp.issubdtype(p.dtype, jnp.floating):
            out.append((scale * jax.random.normal(key, p.shape)).astype(p.dtype))
        else:
            out.append(np.zeros(p.shape, jax.dtypes.float0))
    return jax.tree.unflatten(treedef, out)
