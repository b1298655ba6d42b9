"""The protocol, and the stateless helpers every transformation uses.

accel_jax uses optax's protocol types as its own, so an accel_jax transformation
is an optax transformation and the other way round::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (new_updates, new_state)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

GradientTransformation = optax.GradientTransformation
GradientTransformationExtraArgs = optax.GradientTransformationExtraArgs
Schedule = optax.Schedule
Params = optax.Params
Updates = optax.Updates
OptState = optax.OptState
EmptyState = optax.EmptyState

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]

# tx.update -> why tx needs the params as their tree (see needs_params_tree).
_PARAMS_TREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def needs_params_tree(tx: GradientTransformation, reason: str) -> GradientTransformation:
    """Marks ``tx`` as needing the params as their tree, not one flat buffer; returns ``tx``.

    For transformations that are not elementwise (per-leaf norms, shapes, masks or
    labels): :func:`accel_jax.pack_state` refuses them, naming ``reason`` (say
    ``"adaptive_grad_clip: clips each unit by its own norm"``).
    """
    _PARAMS_TREE[tx.update] = reason
    return tx


def params_tree_reason(tx: GradientTransformation) -> str | None:
    """Why ``tx`` (or a transformation it contains) needs the params' tree; ``None`` if not."""
    try:
        return _PARAMS_TREE.get(tx.update)
    except TypeError:  # an update function that cannot be weakly referenced: never marked
        return None


def forward_params_tree(
    wrapper: GradientTransformation, *inners: GradientTransformation
) -> GradientTransformation:
    """Marks ``wrapper`` when one of the ``inners`` it runs needs the params' tree
    (:func:`needs_params_tree`, with that inner's reason); returns ``wrapper``.

    For every transformation built from others: ``chain``, and each wrapper of an inner
    transformation (:func:`accel_jax.fused.forward_kernel_steps` calls it for those that
    forward a native kernel).
    """
    for inner in inners:
        reason = params_tree_reason(inner)
        if reason is not None:
            return needs_params_tree(wrapper, reason)
    return wrapper


def stateless(fn: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transformation without state: ``update`` returns ``fn(updates, params)``.

    The state is ``EmptyState()``; ``fn`` receives the params (``None`` when the
    caller gave none).
    """

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None):
        return fn(updates, params), state

    return GradientTransformation(init_fn, update_fn)


def identity() -> GradientTransformation:
    """The transformation that returns the updates unchanged (state: ``EmptyState``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.identity()
    >>> tx.update({"w": jnp.ones(2)}, tx.init(None))[0]["w"].tolist()
    [1.0, 1.0]
    """

    return stateless(lambda updates, params: updates)


def require_params(params: Any, name: str) -> None:
    """Raises ``ValueError`` when a transformation that reads the params was not given them."""
    if params is None:
        raise ValueError(f"{name} needs the params: call update(updates, state, params).")


def is_float0(x: Any) -> bool:
    """True for the ``float0`` gradients JAX returns for integer leaves."""
    return getattr(x, "dtype", None) == jax.dtypes.float0


def is_trainable(x: Any) -> bool:
    """True for leaves an optimizer acts on: inexact (floating or complex) arrays."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def as_array_leaf(x: Any) -> Any:
    """A Python ``float``/``complex`` leaf as a 0-d array (treated like one); else ``x``."""
    if isinstance(x, (float, complex)):
        return jnp.asarray(x)
    return x


def is_zero_literal(x: Any) -> bool:
    """True for a Python or NumPy number equal to 0 (never for an array or a tracer).

    Builders decide on their chain's structure only from such literals: optax's
    ``inject_hyperparams`` passes every number as an array, so a hyperparameter's
    *value* must never steer Python control flow.
    """
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and x == 0


def leafwise(fn: Callable[..., Any], keep: int = 0) -> Callable[..., Any]:
    """Wraps a per-leaf function so leaves that are not trainable pass through.

    ``leafwise(fn, keep=k)(g, *rest)`` returns ``fn(g, *rest)`` when ``g`` is an
    inexact array and the ``k``-th argument unchanged otherwise (the ``float0``
    gradient of an integer parameter, say). Used with ``jax.tree.map`` so every
    transformation lets integer leaves through without touching them.
    """

    def wrapped(g, *rest):
        g, rest = as_array_leaf(g), tuple(as_array_leaf(r) for r in rest)
        if not is_trainable(g):
            return (g, *rest)[keep]
        return fn(g, *rest)

    return wrapped


def _state_dtype(p: Any, dtype: Any) -> Any:
    p = jnp.asarray(p)
    return dtype if dtype is not None and jnp.issubdtype(p.dtype, jnp.inexact) else p.dtype


def zeros_like_tree(params: Params, dtype: Any = None) -> Any:
    """Zeros shaped like ``params`` (``dtype`` if given, for inexact leaves only).

    Built with ``zeros_like``, so an ``init`` called on sharded params returns
    state with the same sharding. (Under ``jax.jit`` nothing propagates from an
    unused input: give ``out_shardings`` to a jitted ``init``.)
    """
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_state_dtype(p, dtype)), params)


def full_like_tree(params: Params, value: float, dtype: Any = None) -> Any:
    """``value`` everywhere, shaped (and sharded) like ``params``; ``dtype`` as above."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=_state_dtype(p, dtype)), params)


def compute_dtype(*leaves: Any) -> Any:
    """The dtype a per-leaf computation runs in: the widest of the leaves' dtypes, at least float32.

    Low-precision leaves (bf16 params, bf16 moments) are computed in float32 and
    the result is cast back to each output's own dtype by the caller: in bf16,
    ``0.999`` rounds to ``1.0`` and ``1 - b2`` would vanish. The step is memory
    bound, so the wider arithmetic costs nothing measurable.
    """
    dtypes = [jnp.dtype(leaf.dtype) for leaf in leaves] + [jnp.dtype(jnp.float32)]
    # Widest first: complex over real, then by size (jnp.result_type refuses bf16 + f32
    # under strict promotion, which is exactly the mix this must handle).
    return max(dtypes, key=lambda d: (jnp.issubdtype(d, jnp.complexfloating), d.itemsize))


def check_structure(updates: Any, reference: Any, what: str) -> None:
    """Raises ``ValueError`` naming the first path where two pytrees differ.

    Runs at trace time (no cost inside ``jit``): ``update`` calls it so a tree that
    does not match the optimizer state fails at the first call, with the path.
    """
    if jax.tree.structure(updates) == jax.tree.structure(reference):
        _check_shapes(updates, reference, what)
        return
    is_none = lambda x: x is None
    got = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_none)[0]
    want = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_none)[0]
    got_paths = [jax.tree_util.keystr(p) for p, _ in got]
    want_paths = [jax.tree_util.keystr(p) for p, _ in want]
    for g, w in zip(got_paths, want_paths, strict=False):
        if g != w:
            raise ValueError(
                f"updates do not match {what}: first mismatch at path {g or '<root>'!s} "
                f"(expected {w or '<root>'!s}). The updates must have the structure of "
                "the params the optimizer state was initialised with."
            )
    if len(got_paths) == len(want_paths):
        raise ValueError(
            f"updates do not match {what}: the trees have different node types "
            f"({jax.tree.structure(updates)} vs {jax.tree.structure(reference)})."
        )
    longer, label = (got_paths, "updates") if len(got_paths) > len(want_paths) else (
        want_paths,
        what,
    )
    extra = longer[min(len(got_paths), len(want_paths))] if longer else "<root>"
    raise ValueError(
        f"updates do not match {what}: path {extra or '<root>'} exists only in {label} "
        f"({len(got_paths)} leaves in updates, {len(want_paths)} in {what})."
    )


def _check_shapes(updates: Any, reference: Any, what: str) -> None:
    """Same structure: every leaf must also have its reference's shape (no silent broadcast)."""
    got = jax.tree_util.tree_flatten_with_path(updates)[0]
    for (path, u), r in zip(got, jax.tree.leaves(reference), strict=True):
        u_shape, r_shape = getattr(u, "shape", None), getattr(r, "shape", None)
        if u_shape is not None and r_shape is not None and tuple(u_shape) != tuple(r_shape):
            raise ValueError(
                f"updates do not match {what}: at path {jax.tree_util.keystr(path)} the update "
                f"has shape {tuple(u_shape)} but {what} has shape {tuple(r_shape)}."
            )


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns ``params + updates``, leaf by leaf, keeping each param's dtype.

    ``None`` leaves and non-trainable leaves (integer params, whose gradient is
    ``float0``) are returned unchanged.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> aj.apply_updates({"w": jnp.ones(2)}, {"w": jnp.full(2, -0.5)})["w"].tolist()
    [0.5, 0.5]
    """

    if params is None:  # optax: nothing to update
        return None
    check_structure(updates, params, "the params")

    def add(p, u):
        if u is None or p is None or not is_trainable(jnp.asarray(p)) or is_float0(u):
            return p
        p, u = jnp.asarray(p), jnp.asarray(u)
        return (p + u.astype(p.dtype)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


def moment_leaf(g: jax.Array, m: jax.Array, decay: jax.Array, order: int, dt: Any) -> jax.Array:
    """``decay * m + (1 - decay) * g**order`` for one leaf, computed (and returned) in ``dt``."""
    g = g.astype(dt)
    if order == 1:
        x = g
    elif order == 2:
        x = jnp.abs(g) ** 2 if jnp.iscomplexobj(g) else g * g
    else:
        x = jnp.abs(g) ** order
    d = decay.astype(dt)
    return d * m.astype(dt) + (1 - d) * x.astype(dt)  # |g|^2 is real: back to dt (complex)


def update_moment(updates: Updates, moments: Any, decay: jax.Array, order: int) -> Any:
    """Exponential moving average of ``g**order`` (``|g|**2`` for complex ``g``), leafwise::

        m <- decay * m + (1 - decay) * g**order

    computed in the wider of the gradient's and the moment's dtype and stored in
    the moment's dtype. Non-trainable leaves keep their moment unchanged.
    """

    def moment(g, m):
        return moment_leaf(g, m, decay, order, compute_dtype(g, m)).astype(m.dtype)

    return jax.tree.map(leafwise(moment, keep=1), updates, moments)


def incremental_update(new_tensors: Any, old_tensors: Any, step_size: Any) -> Any:
    """Polyak (exponential) averaging of two trees: ``step_size * new + (1 - step_size) * old``.

    For a target network: ``target = incremental_update(online, target, 0.01)``.
    ``None`` leaves stay ``None`` (optax's ``incremental_update``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> aj.incremental_update(jnp.ones(1), jnp.zeros(1), 0.25).tolist()
    [0.25]
    """
    return jax.tree.map(
        lambda new, old: None if new is None else step_size * new + (1.0 - step_size) * old,
        new_tensors, old_tensors, is_leaf=lambda x: x is None,
    )


def periodic_update(new_tensors: Any, old_tensors: Any, steps: Any, update_period: Any) -> Any:
    """``new_tensors`` at the steps that are multiples of ``update_period``, else ``old_tensors``
    (a periodically refreshed target network; optax's ``periodic_update``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> aj.periodic_update(jnp.ones(1), jnp.zeros(1), 4, 2).tolist()
    [1.0]
    """
    return jax.lax.cond(
        jnp.mod(steps, update_period) == 0, lambda: new_tensors, lambda: old_tensors
    )
