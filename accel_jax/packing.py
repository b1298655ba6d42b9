"""Packed optimizer state: one buffer per dtype for each state slot, params kept as a tree.

A jitted step over a params tree of thousands of small leaves costs mostly the
passing of buffers in and out of the computation (tens of microseconds per
buffer on a CPU, whatever the step computes). Adam's state doubles the buffers of
the params twice over; :func:`pack_state` keeps it as one buffer per dtype for
each moment, so a step passes the params and gradients per leaf and the state as
a handful of buffers. Unlike :func:`accel_jax.flatten_params`, the model, the
gradients and the params stay the user's tree: only the optimizer changes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _native
from accel_jax._validation import check_number
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    apply_updates,
    as_array_leaf,
)
from accel_jax.combine import _call_update
from accel_jax.fused import FlatLayout, KernelSpec, forward_kernel_step, kernel_spec


def pack_state(
    inner: GradientTransformation, *, pad_to: int = 1
) -> GradientTransformationExtraArgs:
    """``inner`` with its state kept as one buffer per dtype; params and gradients stay trees.

    ``init(params)`` is ``inner.init`` of the params flattened into one 1-D buffer per
    dtype (:func:`accel_jax.flatten_params`'s layout), and ``update(g, state, p)`` is

        u_flat, state = inner.update(flatten(g), state, flatten(p));  u = unflatten(u_flat)

    so each of Adam's moments is one buffer (``state[0].mu == {"float32": buffer}``)
    whatever the number of leaves. The state is an ordinary pytree of ``inner``'s
    types: checkpoints, :func:`accel_jax.get_hyperparams` and ``set_hyperparams`` work
    unchanged; the layout is recomputed from the params' shapes at each trace, and a
    params tree that no longer matches the buffers is an error at the first update.

    For elementwise ``inner`` (every named optimizer, clipping by value, weight decay
    without a mask): the values per parameter are then the same as on the tree (tested
    for each optimizer). Transformations that need the tree (per-leaf masks, ``partition``
    labels, per-leaf norms as in ``adaptive_grad_clip``, ``lamb``, ``muon``, ``adafactor``)
    would act on the whole buffer, so ``pack_state`` refuses them, also inside a ``chain``
    or a wrapper (``ValueError`` naming the culprit): keep them outside, e.g.
    ``aj.chain(aj.adaptive_grad_clip(0.01), aj.pack_state(aj.adam(1e-3)))``, and wrap it,
    not the reverse (``aj.skip_non_finite(aj.pack_state(tx))``).

    Under :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` the native CPU
    kernels (Adam, AdamW, bfloat16 moments, SGD with momentum, RMSProp) read and write
    each leaf's part of the packed buffers in place, at its offset: no copy of params,
    gradients or state. Other kernels (8-bit Adam) run on the concatenated buffers.
    When it pays: params trees of hundreds of leaves or more (measured in
    ``docs/performance.md``); on a few large leaves it changes nothing.

    ``pad_to``: each buffer's length is rounded up to a multiple of it (the padding's
    gradients are zero and its values never leave the state), so that
    :func:`accel_jax.state_shardings` with ``mode="zero1"`` can split the buffers over a
    data axis of that size (ZeRO-1); without padding a buffer that the axis does not
    divide stays replicated.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.pack_state(aj.adam(1e-3))
    >>> params = {"b": jnp.zeros(2), "w": jnp.ones((2, 3))}
    >>> state = tx.init(params)
    >>> state[0].mu["float32"].shape
    (8,)
    >>> updates, state = tx.update(params, state, params)
    >>> updates["w"].shape
    (2, 3)
    """
    from accel_jax._validation import check_transformation
    from accel_jax.base import params_tree_reason

    check_transformation("inner", inner)
    reason = params_tree_reason(inner)
    if reason is not None:
        raise ValueError(
            f"pack_state: inner needs the params as a tree ({reason}) but would see one flat "
            "buffer per dtype. pack_state works for elementwise optimizers (adam, adamw, sgd, "
            "rmsprop, lion, ...); keep a transformation that needs the tree outside it, e.g. "
            "aj.chain(aj.adaptive_grad_clip(0.01), aj.pack_state(aj.adamw(1e-3)))."
        )
    check_number("pad_to", pad_to, lo=1, integer=True)

    def init_fn(params):
        return inner.init(FlatLayout.of(params, pad_to).flatten(params))

    def update_fn(updates, state, params=None, **extra_args):
        layout = FlatLayout.of(updates if params is None else params, pad_to)
        flat_params = None if params is None else layout.flatten(params)
        flat_updates, state = _inner_update(
            inner, layout, layout.flatten(updates), state, flat_params, extra_args
        )
        return layout.unflatten(flat_updates), state

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    spec = kernel_spec(inner)

    def wrap(inner_step):
        if spec is not None:
            return _packed_step(inner, spec, pad_to)
        return _flat_step(inner_step, pad_to)

    return forward_kernel_step(tx, inner, wrap)


def _inner_update(inner, layout, flat_updates, state, flat_params, extra_args):
    """``inner``'s update on the flat buffers; a mismatch names the packed layout."""
    try:
        return _call_update(inner, flat_updates, state, flat_params, extra_args)
    except ValueError as err:
        raise ValueError(
            f"pack_state: the params/updates (flat buffers of sizes {layout.sizes}) do not "
            f"fit this state (made by pack_state(...).init of other params?): {err}"
        ) from err


def _flat_step(inner_step, pad_to):
    """A wrapped optimizer's native step run on the concatenated params and gradients."""

    def step(params, state, grads, extra_args, required):
        layout = FlatLayout.of(params, pad_to)
        flat, state = inner_step(
            layout.flatten(params), state, layout.flatten(grads), extra_args, required
        )
        return layout.unflatten(flat), state

    return step


def _packed_step(inner: GradientTransformation, spec: KernelSpec, pad_to: int):
    """The native step of ``inner`` (an optimizer with a kernel) on packed state.

    As ``fused._kernel_step``: ``inner``'s own update runs first (validation, counts,
    schedules; its results for the groups the kernel computes are dead code). Per
    dtype group: a kernel with a packed variant updates every leaf's range of the
    state buffers in place; another kernel runs on the group's concatenated params
    and gradients; a group no kernel takes keeps the XLA results.
    """

    def step(params, state, grads, extra_args, required):
        layout = FlatLayout.of(params, pad_to)
        flat_p, flat_g = layout.flatten(params), layout.flatten(grads)
        flat_u, new_state = _inner_update(inner, layout, flat_g, state, flat_p, extra_args)
        p_leaves = [as_array_leaf(x) for x in layout.treedef.flatten_up_to(params)]
        g_leaves = [as_array_leaf(x) for x in layout.treedef.flatten_up_to(grads)]
        out_p = layout.treedef.flatten_up_to(apply_updates(params, layout.unflatten(flat_u)))
        old_slots, new_slots = spec.slots(state), [dict(t) for t in spec.slots(new_state)]
        values = _group_values(spec, flat_p, new_state)
        scalars = spec.scalars(new_state)
        taken = False
        for name in layout.sizes:
            idx = [i for i, s in enumerate(layout.slots) if s.group == name]
            bufs = [t.get(name) if isinstance(t, dict) else None for t in old_slots]
            row = (flat_p[name], flat_g[name], *bufs)
            leaves_ok = all(
                g_leaves[i].dtype == p_leaves[i].dtype and g_leaves[i].shape == p_leaves[i].shape
                for i in idx
            )
            if not leaves_ok or not _takes(spec, row):
                continue
            target = spec.target
            if not isinstance(target, str):
                target = target([[x] for x in row])
            if target in _native.PACKED:
                offsets = tuple(layout.slots[i].offset for i in idx)
                new_ps, new_bufs = _native.native_leaves(
                    target, offsets, scalars, jnp.full(len(idx), values[name]),
                    [p_leaves[i] for i in idx], [g_leaves[i] for i in idx], bufs,
                )
            else:
                (new_flat,), new_cols = _native.native_leaves(
                    target, None, scalars, values[name][None], [row[0]], [row[1]],
                    [[b] for b in bufs],
                )
                new_ps = layout.group_leaves(name, new_flat)
                new_bufs = [col[0] for col in new_cols]
            for i, p in zip(idx, new_ps, strict=True):
                out_p[i] = p
            for tree, buf in zip(new_slots, new_bufs, strict=True):
                tree[name] = buf
            taken = True
        if required and not taken:
            raise ValueError(
                "apply_step(kernel=True): the kernel takes float32 params, gradients and "
                "optimizer state; no group of the packed state qualifies."
            )
        return jax.tree.unflatten(layout.treedef, out_p), spec.with_slots(new_state, new_slots)

    return step


def _takes(spec: KernelSpec, row: tuple) -> bool:
    if any(x is None for x in row):
        return False
    if spec.takes is not None:
        return spec.takes(row[0], row)
    return all(getattr(x, "dtype", None) == jnp.float32 and x.shape == row[0].shape for x in row)


def _group_values(spec: KernelSpec, flat_p: dict[str, Any], new_state: Any) -> dict[str, Any]:
    """``spec.leaf_scalars`` per dtype group of the flat params (zeros without it)."""
    with_path = jax.tree_util.tree_flatten_with_path(flat_p)[0]
    names = [path[0].key for path, _ in with_path]
    if spec.leaf_scalars is None:
        return {name: jnp.zeros([], jnp.float32) for name in names}
    values = spec.leaf_scalars(flat_p, new_state)
    return dict(zip(names, values, strict=True))
