"""Combinators: chain, masked, partition (per-parameter-group transforms), freeze."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    leafwise,
    stateless,
)


def _call_update(tx: GradientTransformation, updates, state, params, extra_args):
    """Calls ``tx.update``, forwarding extra arguments only to transformations that take them."""
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx.update(updates, state, params, **extra_args)
    return tx.update(updates, state, params)


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies transformations in sequence; the state is the tuple of their states.

    Extra keyword arguments of ``update`` (``value=`` for a plateau scheduler,
    say) are forwarded to every element that accepts them.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.chain(aj.scale(2.0), aj.scale_by_learning_rate(0.1))
    >>> round(float(tx.update({"w": jnp.ones(1)}, tx.init(None))[0]["w"][0]), 6)
    -0.2
    """
    for i, tx in enumerate(transforms):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(
                f"chain: element {i} must be a GradientTransformation, got {type(tx).__name__}."
            )

    def init_fn(params):
        return tuple(tx.init(params) for tx in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain: the state has {len(state)} elements but the chain has "
                f"{len(transforms)} transformations; was it initialised by this chain?"
            )
        new_states = []
        for tx, s in zip(transforms, state, strict=True):
            updates, s = _call_update(tx, updates, s, params, extra_args)
            new_states.append(s)
        return updates, tuple(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a masked transformation does not see (an empty pytree)."""


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner transformation's state over the selected leaves."""

    inner_state: Any


def _broadcast_to_leaves(prefix: Any, tree: Any, what: str) -> list:
    """Leaves of ``prefix`` repeated over ``tree``'s leaves (``prefix`` may be a tree prefix)."""
    try:
        full = jax.tree.map(
            lambda p, sub: jax.tree.map(lambda _: p, sub), prefix, tree,
            is_leaf=lambda x: x is None,
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what} must be a pytree with the structure of the params (or a prefix of it): {e}"
        ) from None
    leaves = jax.tree.leaves(full, is_leaf=lambda x: x is None)
    return leaves


def _resolve(tree_or_fn: Any, params: Any) -> Any:
    return tree_or_fn(params) if callable(tree_or_fn) else tree_or_fn


def mask_flags(mask: Any, tree: Any) -> list[bool]:
    """One bool per leaf of ``tree``: ``mask`` (a pytree of bools or a prefix of one, or a
    function of ``tree`` returning one) broadcast over the leaves."""
    leaves = jax.tree.leaves(tree)
    flags = [f for f in _broadcast_to_leaves(_resolve(mask, tree), tree, "mask") if f is not None]
    if len(flags) != len(leaves):
        raise ValueError(f"mask has {len(flags)} leaves for {len(leaves)} leaves of the params.")
    return [bool(f) for f in flags]


def masked(
    inner: GradientTransformation, mask: Any | Callable[[Any], Any]
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` to the leaves where ``mask`` is True; the others pass through.

    ``mask`` is a pytree of bools shaped like the params (or a prefix of it, e.g.
    ``{"encoder": False, "head": True}``), or a function of the params returning
    one. The inner state covers the selected leaves only.
    """

    def select(tree, mask_tree):
        treedef = jax.tree.structure(tree)
        leaves = jax.tree.leaves(tree)
        flags = mask_flags(mask_tree, tree)
        chosen = [leaf if f else MaskedNode() for leaf, f in zip(leaves, flags, strict=True)]
        return treedef, flags, jax.tree.unflatten(treedef, chosen)

    def init_fn(params):
        _, _, chosen = select(params, _resolve(mask, params))
        return MaskedState(inner.init(chosen))

    def update_fn(updates, state, params=None, **extra_args):
        mask_tree = _resolve(mask, updates if params is None else params)
        treedef, flags, chosen_updates = select(updates, mask_tree)
        chosen_params = None if params is None else select(params, mask_tree)[2]
        new_chosen, inner_state = _call_update(
            inner, chosen_updates, state.inner_state, chosen_params, extra_args
        )
        new_leaves = jax.tree.leaves(new_chosen, is_leaf=lambda x: isinstance(x, MaskedNode))
        merged = [
            new if flag else old
            for old, new, flag in zip(jax.tree.leaves(updates), new_leaves, flags, strict=True)
        ]
        return jax.tree.unflatten(treedef, merged), MaskedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class PartitionState(NamedTuple):
    """State of :func:`partition`: one inner state per label."""

    inner_states: dict[Hashable, Any]


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
) -> GradientTransformationExtraArgs:
    """Different transformations for different parameter groups.

    ``param_labels`` is a pytree of labels shaped like the params (or a prefix of
    it), or a function of the params returning one; :func:`path_labels` builds
    such a function from the parameter paths. Each label must be a key of
    ``transforms``. Each transformation keeps state for its own group only.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    >>> tx = aj.partition({"train": aj.sgd(0.1), "frozen": aj.freeze()},
    ...                   {"w": "train", "b": "frozen"})
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> [round(x, 6) for x in u["w"].tolist()], u["b"].tolist()
    ([-0.1, -0.1], [0.0])
    """
    transforms = dict(transforms)

    def masks(params):
        labels_tree = _resolve(param_labels, params)
        labels = _broadcast_to_leaves(labels_tree, params, "param_labels")
        leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, _), label in zip(leaves_with_path, labels, strict=False):
            if label not in transforms:
                raise ValueError(
                    f"partition: the parameter at {jax.tree_util.keystr(path)} has label "
                    f"{label!r}, which is not a key of transforms {sorted(map(str, transforms))}."
                )
        treedef = jax.tree.structure(params)
        return {
            key: jax.tree.unflatten(treedef, [label == key for label in labels])
            for key in transforms
        }

    def init_fn(params):
        m = masks(params)
        return PartitionState(
            {key: masked(tx, m[key]).init(params) for key, tx in transforms.items()}
        )

    def update_fn(updates, state, params=None, **extra_args):
        m = masks(updates if params is None else params)
        new_states = {}
        for key, tx in transforms.items():
            updates, new_states[key] = masked(tx, m[key]).update(
                updates, state.inner_states[key], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def path_labels(fn: Callable[[str, Any], Hashable]) -> Callable[[Any], Any]:
    """Builds a ``param_labels`` function from the parameter paths.

    ``fn(path, leaf)`` receives the path as a ``/``-joined string such as
    ``"params/Dense_0/kernel"`` and returns the leaf's label.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> labels = aj.path_labels(lambda path, _: "no_decay" if path.endswith("bias") else "decay")
    >>> labels({"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(1)}})
    {'dense': {'bias': 'no_decay', 'kernel': 'decay'}}
    """

    def key_name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: fn("/".join(key_name(k) for k in path), leaf), params
        )

    return labels


def freeze(mask: Any | Callable[[Any], Any] | None = None) -> GradientTransformation:
    """Sets the updates to zero: for every leaf, or where ``mask`` is True.

    Frozen leaves keep no optimizer state when ``freeze()`` is used as a group of
    :func:`partition`, so freezing a backbone also frees its optimizer memory.
    """

    tx = stateless(lambda updates, params: jax.tree.map(leafwise(jnp.zeros_like), updates))
    return tx if mask is None else masked(tx, mask)
