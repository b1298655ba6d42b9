"""Fast paths for the optimizer step: a fused step helper and flat parameters.

Two things make an optimizer step slower than the bytes it must move:

* **per-leaf overhead**: XLA emits a few kernels per parameter leaf (one per
  output array: each moment and the new param), and compile time grows with the
  number of kernels. A model with thousands of small leaves pays for each.
* **extra passes**: a step written as ``update`` then ``apply_updates`` outside
  one ``jit`` materialises the updates and reads them again.

:func:`apply_step` (and :func:`make_step`, its jitted, donating form) runs
``update`` and ``apply_updates`` as one computation. :func:`flatten_params`
keeps the params as one contiguous buffer per dtype: the optimizer (any
accel_jax or optax transformation, unchanged) then sees a few large arrays, so
its state is a few contiguous buffers and its step is a handful of kernels
whatever the number of leaves. ``docs/performance.md`` says when to use which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax.base import GradientTransformation, apply_updates, is_trainable
from accel_jax.combine import _call_update


def apply_step(
    tx: GradientTransformation, params: Any, opt_state: Any, grads: Any, **extra_args: Any
) -> tuple[Any, Any]:
    """One optimizer step: ``update`` then ``apply_updates``; returns ``(params, opt_state)``.

    Arguments in the order of the results, as ``make_step``'s ``step`` takes them.

    The same arithmetic as calling both yourself (results are bit-identical);
    called inside one ``jax.jit`` the updates are never written to memory. Extra
    keyword arguments go to transformations that take them (``value=`` for a
    plateau scheduler).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1)
    >>> params = {"w": jnp.ones(2)}
    >>> params, state = aj.apply_step(tx, params, tx.init(params), {"w": jnp.ones(2)})
    >>> params["w"].tolist()
    [0.8999999761581421, 0.8999999761581421]
    """
    updates, opt_state = _call_update(tx, grads, opt_state, params, extra_args)
    return apply_updates(params, updates), opt_state


def make_step(
    tx: GradientTransformation, *, donate: bool = True, jit: bool = True
) -> Callable[..., tuple[Any, Any]]:
    """``step(params, opt_state, grads, **extra_args) -> (params, opt_state)``, jitted.

    With ``donate=True`` (the default) the params and state buffers are donated:
    XLA updates them in place, so the step needs no second copy of the model and
    optimizer state. Do not use the arrays you passed in after the call.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adam(1e-3)
    >>> step = aj.make_step(tx)
    >>> params = {"w": jnp.ones(3)}
    >>> params, state = step(params, tx.init(params), {"w": jnp.ones(3)})
    >>> round(float(params["w"][0]), 6)
    0.999
    """

    def step(params, opt_state, grads, **extra_args):
        return apply_step(tx, params, opt_state, grads, **extra_args)

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


class _Slot(NamedTuple):
    group: str  # dtype name, or "" for a leaf kept as is
    offset: int
    shape: tuple[int, ...]


class FlatLayout:
    """Where each leaf of a params tree lives in its flat buffers (static, hashable)."""

    def __init__(self, treedef, slots: tuple[_Slot, ...], sizes: dict[str, int]):
        self.treedef = treedef
        self.slots = slots
        self.sizes = sizes

    def unflatten(self, flat: dict[str, Any]) -> Any:
        """The params tree that ``flat`` holds (slices of the buffers, reshaped)."""
        others = iter(flat.get("other", ()))
        leaves = []
        for slot in self.slots:
            if slot.group == "":
                leaves.append(next(others))
            else:
                size = math.prod(slot.shape)
                buf = flat[slot.group]
                leaves.append(
                    jax.lax.slice_in_dim(buf, slot.offset, slot.offset + size).reshape(slot.shape)
                )
        return jax.tree.unflatten(self.treedef, leaves)

    def flatten(self, tree: Any) -> dict[str, Any]:
        """The flat buffers of a tree shaped like the params (params, grads or updates)."""
        leaves = self.treedef.flatten_up_to(tree)
        groups: dict[str, list] = {name: [] for name in self.sizes}
        others = []
        for slot, leaf in zip(self.slots, leaves, strict=True):
            if slot.group == "":
                others.append(leaf)
            else:
                groups[slot.group].append(jnp.ravel(leaf))
        flat: dict[str, Any] = {
            name: (parts[0] if len(parts) == 1 else jnp.concatenate(parts))
            for name, parts in groups.items()
        }
        if others:
            flat["other"] = tuple(others)
        return flat


def flatten_params(params: Any) -> tuple[dict[str, jax.Array], FlatLayout]:
    """Params as one contiguous 1-D buffer per floating dtype, and their layout.

    Returns ``(flat, layout)``: ``flat`` is a dict ``{dtype name: buffer}`` (plus
    ``"other"``, a tuple of the integer leaves, kept as they are; ``None`` leaves
    stay in the tree structure), and ``layout.unflatten(flat)`` rebuilds the tree.
    Train on ``flat``: differentiate ``loss(layout.unflatten(flat), batch)`` with
    respect to ``flat`` and give the flat gradients to any optimizer, whose state
    then is a few contiguous buffers. The arithmetic per value is unchanged, so
    elementwise optimizers give the same values as on the tree; transformations
    that need the tree (per-leaf masks, ``partition`` labels) need it kept.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> flat, layout = aj.flatten_params({"b": jnp.zeros(2), "w": jnp.ones((2, 2))})
    >>> flat["float32"].shape
    (6,)
    >>> layout.unflatten(flat)["w"].shape
    (2, 2)
    """
    leaves, treedef = jax.tree.flatten(params)
    slots = []
    sizes: dict[str, int] = {}
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        if not is_trainable(leaf):
            slots.append(_Slot("", 0, tuple(leaf.shape)))
            continue
        name = jnp.dtype(leaf.dtype).name
        offset = sizes.get(name, 0)
        slots.append(_Slot(name, offset, tuple(leaf.shape)))
        sizes[name] = offset + leaf.size
    layout = FlatLayout(treedef, tuple(slots), sizes)
    return layout.flatten(params), layout
