"""Combinators: chain, masked, partition (per-parameter-group transforms), freeze."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    apply_updates,
    forward_params_tree,
    leafwise,
    needs_params_tree,
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
        for i, (tx, s) in enumerate(zip(transforms, state, strict=True)):
            try:
                updates, s = _call_update(tx, updates, s, params, extra_args)
            except AttributeError as e:  # another transformation's state (a wrong checkpoint)
                from accel_jax._validation import state_mismatch

                raise state_mismatch(f"[{i}]", tx, s, updates) from e
            new_states.append(s)
        return updates, tuple(new_states)

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), *transforms)


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


def is_params_placeholder(params: Any) -> bool:
    """True for the stand-in params ``optax.tree.map_params`` calls ``init`` with."""
    return type(params).__name__ == "_ParamsPlaceholder"


def is_mask_function(mask: Any) -> bool:
    """True when ``mask`` is a function of the params (not a pytree, even a callable one)."""
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return bool(leaves) and all(leaves)


def _mask_tree(tree: Any, mask_tree: Any) -> Any:
    """``tree`` with every subtree under a False mask leaf replaced by ``MaskedNode()``."""
    try:
        return jax.tree.map(lambda m, t: t if m else MaskedNode(), mask_tree, tree)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"mask must be a pytree with the structure of the params (or a prefix of it): {e}"
        ) from None


def _mask_extra_args(extra_args: dict, updates: Any, mask_tree: Any) -> dict:
    """``extra_args`` with each argument shaped like ``updates`` masked by ``mask_tree``."""
    structure = jax.tree.structure(updates)
    return {
        k: _mask_tree(v, mask_tree) if jax.tree.structure(v) == structure else v
        for k, v in extra_args.items()
    }


def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Applies ``inner`` to the leaves where ``mask`` is True; the others pass through.

    ``mask`` is a pytree of bools shaped like the params (or a prefix of it, e.g.
    ``{"encoder": False, "head": True}``), or a function of the params (of the
    updates, in ``update``, as in optax) returning one. The inner state covers the
    selected leaves; the others are ``MaskedNode()`` in it (optax's layout, so
    masks nest and ``optax.tree.map_params`` works). With
    ``mask_compatible_extra_args`` an extra argument of ``update`` shaped like
    the updates is masked too.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.masked(aj.scale(-1.0), {"w": True, "b": False})
    >>> u, _ = tx.update({"w": jnp.ones(1), "b": jnp.ones(1)}, tx.init(None))
    >>> u["w"].tolist(), u["b"].tolist()
    ([-1.0], [1.0])
    """
    from accel_jax._validation import check_transformation

    check_transformation("inner", inner)
    from accel_jax._validation import check_flags

    check_flags(mask_compatible_extra_args=mask_compatible_extra_args)

    def resolve(tree):
        return mask(tree) if is_mask_function(mask) else mask

    def init_fn(params):
        if params is None or is_params_placeholder(params):
            return MaskedState(inner.init(params))
        return MaskedState(inner.init(_mask_tree(params, resolve(params))))

    def update_fn(updates, state, params=None, **extra_args):
        mask_tree = resolve(updates)
        chosen_updates = _mask_tree(updates, mask_tree)
        chosen_params = None if params is None else _mask_tree(params, mask_tree)
        if mask_compatible_extra_args:
            extra_args = _mask_extra_args(extra_args, updates, mask_tree)
        new_chosen, inner_state = _call_update(
            inner, chosen_updates, state.inner_state, chosen_params, extra_args
        )
        merged = jax.tree.map(
            lambda m, new, old: new if m else old, mask_tree, new_chosen, updates,
            is_leaf=lambda x: isinstance(x, MaskedNode),
        )
        return merged, MaskedState(inner_state)

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    if isinstance(mask, bool):  # every leaf or none: as elementwise as inner
        return forward_params_tree(tx, inner) if mask else tx
    return forward_params_tree(
        needs_params_tree(tx, "masked: a mask per leaf of the params (mask=...)"), inner
    )


class PartitionState(NamedTuple):
    """State of :func:`partition`: one inner state per label."""

    inner_states: dict[Hashable, Any]


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Any], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """Different transformations for different parameter groups (optax's ``partition``).

    ``param_labels`` is a pytree of labels shaped like the params (or a prefix of
    it), or a function of the params returning one; :func:`path_labels` builds
    such a function from the parameter paths. Each label must be a key of
    ``transforms``. Each transformation keeps state for its own group only.
    Under :func:`accel_jax.apply_step` / :func:`accel_jax.make_step` a group whose
    transformation has a native CPU kernel (Adam, AdamW, SGD with momentum,
    RMSProp) runs it on the group's leaves; the other groups take the XLA path.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(1)}
    >>> tx = aj.partition({"train": aj.sgd(0.1), "frozen": aj.freeze()},
    ...                   {"w": "train", "b": "frozen"})
    >>> u, _ = tx.update(params, tx.init(params), params)
    >>> [round(x, 6) for x in u["w"].tolist()], u["b"].tolist()
    ([-0.1, -0.1], [0.0])
    """
    transforms = dict(transforms)
    from accel_jax._validation import check_transformation

    for label, t in transforms.items():
        check_transformation(f"transforms[{label!r}]", t)
    from accel_jax._validation import check_flags

    check_flags(mask_compatible_extra_args=mask_compatible_extra_args)
    _masked = functools.partial(masked, mask_compatible_extra_args=mask_compatible_extra_args)

    def masks(params):
        labels_tree = _resolve(param_labels, params)
        if is_params_placeholder(params):
            return {key: jax.tree.map(lambda lb, k=key: lb == k, labels_tree) for key in transforms}
        # None params have no leaf (nor a label): keep the labels of the real leaves only.
        labels = [lb for lb in _broadcast_to_leaves(labels_tree, params, "param_labels")
                  if lb is not None]
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
            {key: _masked(tx, m[key]).init(params) for key, tx in transforms.items()}
        )

    def update_fn(updates, state, params=None, **extra_args):
        m = masks(updates if params is None else params)
        new_states = {}
        for key, tx in transforms.items():
            updates, new_states[key] = _masked(tx, m[key]).update(
                updates, state.inner_states[key], params, **extra_args
            )
        return updates, PartitionState(new_states)

    def wrap_kernel_steps(steps):
        def step(params, state, grads, extra_args, required):
            m = masks(params)
            new_params, new_states, ran = params, {}, False
            for key, tx in transforms.items():
                group_params = _mask_tree(params, m[key])
                group_grads = _mask_tree(grads, m[key])
                args = (
                    _mask_extra_args(extra_args, grads, m[key])
                    if mask_compatible_extra_args else extra_args
                )
                inner_state = state.inner_states[key].inner_state
                if steps[key] is not None and any(jax.tree.leaves(m[key])):
                    group_params, inner_state = steps[key](
                        group_params, inner_state, group_grads, args, required
                    )
                    ran = True
                else:  # the XLA path: this group's update, applied to its leaves
                    updates, inner_state = _call_update(
                        tx, group_grads, inner_state, group_params, args
                    )
                    group_params = apply_updates(group_params, updates)
                new_states[key] = MaskedState(inner_state)
                new_params = jax.tree.map(
                    lambda keep, new, old: new if keep else old, m[key], group_params,
                    new_params, is_leaf=lambda x: isinstance(x, MaskedNode),
                )
            if required and not ran:
                raise ValueError(
                    "apply_step(kernel=True): no group of this partition that has a native "
                    "kernel has a parameter."
                )
            return new_params, PartitionState(new_states)

        return step

    from accel_jax.fused import forward_kernel_steps  # here: fused imports this module

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    tx = needs_params_tree(tx, "partition: a label per leaf of the params (param_labels)")
    return forward_kernel_steps(tx, transforms, wrap_kernel_steps)


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


def selective_transform(
    optimizer: GradientTransformation, *, freeze_mask: Any
) -> GradientTransformationExtraArgs:
    """``optimizer`` on the leaves where ``freeze_mask`` is False; zero updates (and no
    optimizer state) where it is True. ``freeze_mask`` is a bool or a pytree of bools
    (a prefix of the params); optax's ``selective_transform``. A :func:`partition`, so
    ``optimizer``'s native kernel stays in use under :func:`accel_jax.apply_step`.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.selective_transform(aj.sgd(1.0), freeze_mask={"w": False, "b": True})
    >>> p = {"w": jnp.ones(1), "b": jnp.ones(1)}
    >>> u, _ = tx.update(p, tx.init(p), p)
    >>> u["w"].tolist(), u["b"].tolist()
    ([-1.0], [0.0])
    """
    from accel_jax._validation import check_transformation

    check_transformation("optimizer", optimizer)

    def labels(params):
        del params
        return jax.tree.map(lambda m: "freeze" if m else "train", freeze_mask)

    return partition({"train": optimizer, "freeze": freeze()}, labels)


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformationExtraArgs:
    """:func:`chain` whose state is a dict keyed by the given names (optax's ``named_chain``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.named_chain(("clip", aj.clip(1.0)), ("sgd", aj.sgd(0.5)))
    >>> sorted(tx.init(jnp.zeros(1)))
    ['clip', 'sgd']
    """
    names = [name for name, _ in transforms]
    if len(names) != len(set(names)):
        raise ValueError(f"named_chain: the names must be unique, got {names}.")

    def init_fn(params):
        return {name: tx.init(params) for name, tx in transforms}

    def update_fn(updates, state, params=None, **extra_args):
        new_state = {}
        for name, tx in transforms:
            updates, new_state[name] = _call_update(tx, updates, state[name], params, extra_args)
        return updates, new_state

    tx = GradientTransformationExtraArgs(init_fn, update_fn)
    return forward_params_tree(tx, *(t for _, t in transforms))
