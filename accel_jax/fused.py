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
whatever the number of leaves. On CPU, the optimizers with a native kernel
(Adam, AdamW, SGD with momentum, RMSProp; ``kernels/cpu_kernels.cc``) run their
step as one pass over memory, where XLA:CPU makes one pass per output array.
``docs/performance.md`` says when to use which.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from accel_jax import _flat, _native
from accel_jax.base import (
    GradientTransformation,
    apply_updates,
    as_array_leaf,
    forward_params_tree,
    is_trainable,
)
from accel_jax.combine import _call_update

# tx.update -> the function that runs tx's whole step (update + apply) with a native kernel.
_KERNEL_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# tx.update -> its KernelSpec (optimizer constructors only; see register_kernel_step).
_KERNEL_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply_step(
    tx: GradientTransformation,
    params: Any,
    opt_state: Any,
    grads: Any,
    *,
    kernel: bool | None = None,
    **extra_args: Any,
) -> tuple[Any, Any]:
    """One optimizer step: ``update`` then ``apply_updates``; returns ``(params, opt_state)``.

    Arguments in the order of the results, as ``make_step``'s ``step`` takes them.

    On the XLA path the arithmetic is the same as calling both yourself (results
    are bit-identical); called inside one ``jax.jit`` the updates are never
    written to memory. Extra keyword arguments go to transformations that take
    them (``value=`` for a plateau scheduler).

    ``kernel`` chooses the native CPU kernel of the optimizers that have one
    (:func:`accel_jax.adam`, :func:`accel_jax.adamw`, :func:`accel_jax.sgd` with
    momentum and no weight decay, :func:`accel_jax.rmsprop` neither centered nor
    with momentum): one pass over memory that writes the params and the state
    together, where XLA:CPU needs one pass per output. ``None`` (the default)
    uses it when it is built (:func:`accel_jax.native_available`), the default
    backend is the CPU with a single device (so nothing can be sharded), and for
    the float32 leaves only;
    ``True`` requires it (``ValueError`` saying why when it cannot run: use it
    under ``pmap``/``shard_map`` or for unsharded arrays); ``False`` never uses
    it. Kernel results equal the XLA path's to float32 rounding (``rtol`` 1e-6:
    XLA contracts some multiply-adds into FMAs), and the step stays
    differentiable (its JVP is the XLA formula's).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1)
    >>> params = {"w": jnp.ones(2)}
    >>> params, state = aj.apply_step(tx, params, tx.init(params), {"w": jnp.ones(2)})
    >>> params["w"].tolist()
    [0.8999999761581421, 0.8999999761581421]
    """
    kernel_step = _kernel_step_for(tx, kernel)
    if kernel_step is not None:
        return kernel_step(params, opt_state, grads, extra_args, kernel is True)
    updates, opt_state = _call_update(tx, grads, opt_state, params, extra_args)
    return apply_updates(params, updates), opt_state


def _kernel_step_for(tx: GradientTransformation, kernel: bool | None) -> Callable | None:
    """The native step of ``tx`` if ``kernel`` asks for it and it can run, else ``None``."""
    if kernel is not None and not isinstance(kernel, bool):  # not 1 or 0.0 (1 == True)
        raise ValueError(f"apply_step: kernel must be None, True or False, got {kernel!r}.")
    if kernel is False:
        return None
    step = _KERNEL_STEPS.get(tx.update)
    if kernel is True:
        if step is None:
            raise ValueError(
                "apply_step(kernel=True): this transformation has no native kernel; adam and "
                "adamw (no amsgrad; float32, bfloat16 or 8-bit state), sgd with momentum and "
                "no weight decay, and rmsprop (not centered, no momentum) have one."
            )
        if not _native.native_available():
            raise ValueError(
                "apply_step(kernel=True): the native kernels are not available: "
                + _native.native_status()
            )
        if jax.default_backend() != "cpu":
            raise ValueError(
                f"apply_step(kernel=True): the native kernels run on the CPU; the default "
                f"backend is {jax.default_backend()!r}."
            )
        return step
    if step is None or jax.default_backend() != "cpu" or jax.device_count() != 1:
        return None
    return step if _native.native_available() else None


def register_kernel_step(tx: GradientTransformation, spec: KernelSpec) -> GradientTransformation:
    """Makes :func:`apply_step` run ``tx``'s step with the native kernel ``spec`` describes.

    For optimizer constructors (``adam``, ``adamw``, ``sgd``, ``rmsprop``); returns
    ``tx`` unchanged.
    """
    _KERNEL_STEPS[tx.update] = _kernel_step(tx, spec)
    _KERNEL_SPECS[tx.update] = spec
    return tx


def kernel_spec(tx: GradientTransformation) -> KernelSpec | None:
    """The :class:`KernelSpec` registered for ``tx`` (an optimizer constructor's), or ``None``."""
    return _KERNEL_SPECS.get(tx.update)


def forward_kernel_step(
    wrapper: GradientTransformation,
    inner: GradientTransformation,
    wrap: Callable[[Callable], Callable],
) -> GradientTransformation:
    """Lets a wrapper of ``inner`` keep ``inner``'s native step; returns ``wrapper``.

    For every transformation that wraps one other (``skip_non_finite``,
    ``accumulate_gradients``, ...): when ``inner`` has a native step (registered
    with :func:`register_kernel_step`, or itself forwarded), ``wrap(inner_step)``
    must return the wrapper's step, with the signature
    ``step(params, state, grads, extra_args, required) -> (params, state)``, that
    runs ``inner_step`` on ``state``'s inner part where the wrapper's ``update``
    would run ``inner.update``. Without it a wrapper silently falls back to the
    XLA path. It also marks ``wrapper`` as needing the params' tree when ``inner``
    does (:func:`accel_jax.base.forward_params_tree`), so ``pack_state`` refuses it.
    """
    return forward_kernel_steps(wrapper, {None: inner}, lambda steps: wrap(steps[None]))


def forward_kernel_steps(
    wrapper: GradientTransformation,
    inners: Mapping[Hashable, GradientTransformation],
    wrap: Callable[[dict[Hashable, Callable | None]], Callable],
) -> GradientTransformation:
    """:func:`forward_kernel_step` for a wrapper of several transformations; returns ``wrapper``.

    For transformations that run one of several on each part of the params
    (``partition``'s groups): when at least one of ``inners`` has a native step,
    ``wrap(steps)`` gets ``{key: that inner's step, or None}`` and must return the
    wrapper's step (same signature), running each inner step on its part and the
    XLA path (``update`` and ``apply_updates``) for the parts whose step is ``None``.
    """
    forward_params_tree(wrapper, *inners.values())
    steps = {key: _KERNEL_STEPS.get(inner.update) for key, inner in inners.items()}
    if any(step is not None for step in steps.values()):
        _KERNEL_STEPS[wrapper.update] = wrap(steps)
    return wrapper


def has_kernel_step(tx: GradientTransformation) -> bool:
    """True when :func:`apply_step` can run ``tx`` with a native kernel (where one is built)."""
    return tx.update in _KERNEL_STEPS


class KernelSpec(NamedTuple):
    """How a chain's state maps onto a native kernel (see ``kernels/cpu_kernels.cc``).

    ``slots(state)``: the per-leaf state trees the kernel updates, in its order;
    ``with_slots(state, trees)``: ``state`` with those trees replaced;
    ``scalars(new_state)``: the step's scalars (float32 vector), read from the
    state the chain's own ``update`` returned (counts, schedules, hyperparameters
    already advanced); ``leaf_scalars(params, new_state)``: one float32 value per
    params leaf, or ``None`` for zeros.
    """

    target: str | Callable[[list], str]  # or target(columns of the leaves it takes)
    slots: Callable[[Any], list]
    with_slots: Callable[[Any, list], Any]
    scalars: Callable[[Any], jax.Array]
    leaf_scalars: Callable[[Any, Any], list] | None = None
    # takes(leaf, row): whether the kernel computes this leaf (row: its param, gradient and
    # slot arrays); None: when all are float32 and shaped like the leaf.
    takes: Callable[[Any, tuple], bool] | None = None


def _kernel_step(tx: GradientTransformation, spec: KernelSpec) -> Callable:
    """``step(params, state, grads, extra_args, required) -> (params, state)`` with the kernel.

    The chain's own ``update`` runs first: it validates the inputs, advances the
    counts, schedules and hyperparameters, and gives the results of leaves the
    kernel does not take (not float32). XLA removes its per-leaf work for the
    leaves the kernel computes, whose outputs are then unused.
    """

    def step(params, state, grads, extra_args, required):
        updates, new_state = _call_update(tx, grads, state, params, extra_args)
        p_leaves, treedef = jax.tree.flatten(params)
        columns = [p_leaves, treedef.flatten_up_to(grads)]
        columns += [treedef.flatten_up_to(t) for t in spec.slots(state)]
        takes = spec.takes or (lambda leaf, row: all(
            getattr(x, "dtype", None) == jnp.float32 and jnp.shape(x) == jnp.shape(leaf)
            for x in row))
        take = [
            takes(leaf, row)
            for leaf, row in zip(p_leaves, zip(*columns, strict=True), strict=True)
        ]
        if not any(take):
            if required:
                raise ValueError(
                    "apply_step(kernel=True): the kernel takes float32 params, gradients and "
                    "optimizer state; no leaf qualifies."
                )
            return apply_updates(params, updates), new_state
        leaf_scalars = (
            spec.leaf_scalars(params, new_state)
            if spec.leaf_scalars is not None
            else [jnp.zeros([], jnp.float32)] * len(p_leaves)
        )
        chosen = [[col[i] for i, ok in enumerate(take) if ok] for col in columns]
        leaf_values = jnp.stack([v for v, ok in zip(leaf_scalars, take, strict=True) if ok])
        target = spec.target if isinstance(spec.target, str) else spec.target(chosen)
        new_p, new_slots = _native.native_leaves(
            target, None, spec.scalars(new_state), leaf_values, chosen[0], chosen[1], chosen[2:]
        )
        results = [treedef.flatten_up_to(apply_updates(params, updates))]
        results += [treedef.flatten_up_to(t) for t in spec.slots(new_state)]
        for col, out in zip(results, [new_p, *new_slots], strict=True):
            out = iter(out)
            for i, ok in enumerate(take):
                if ok:
                    col[i] = next(out)
        slots = [jax.tree.unflatten(treedef, col) for col in results[1:]]
        return jax.tree.unflatten(treedef, results[0]), spec.with_slots(new_state, slots)

    return step


def make_step(
    tx: GradientTransformation, *, donate: bool = True, jit: bool = True, kernel: bool | None = None
) -> Callable[..., tuple[Any, Any]]:
    """``step(params, opt_state, grads, **extra_args) -> (params, opt_state)``, jitted.

    The arguments come in the order of the result, params first: the reverse of
    optax's ``update(grads, opt_state, params)``. The params and the gradients have
    the same structure, so the optax order cannot be detected; call the step with
    keywords (``step(params=p, opt_state=s, grads=g)``), which donate the same buffers.

    With ``donate=True`` (the default) the params and state buffers are donated:
    XLA updates them in place, so the step needs no second copy of the model and
    optimizer state. Do not use the arrays you passed in after the call.
    ``kernel`` is :func:`apply_step`'s (by default the native CPU kernel of Adam,
    AdamW, SGD with momentum and RMSProp is used where it is safe).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adam(1e-3)
    >>> step = aj.make_step(tx)
    >>> params = {"w": jnp.ones(3)}
    >>> params, state = step(params, tx.init(params), {"w": jnp.ones(3)})
    >>> round(float(params["w"][0]), 6)
    0.999
    >>> params, state = step(params=params, opt_state=state, grads={"w": jnp.ones(3)})
    >>> round(float(params["w"][0]), 6)
    0.998
    """

    def step(params, opt_state, grads, **extra_args):
        return apply_step(tx, params, opt_state, grads, kernel=kernel, **extra_args)

    if not jit:
        return step
    return jax.jit(step, donate_argnames=("params", "opt_state") if donate else ())


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

    @classmethod
    def of(cls, tree: Any, pad_to: int = 1) -> FlatLayout:
        """The layout of ``tree``'s leaves (from their shapes and dtypes only).

        ``pad_to``: each buffer's length is rounded up to a multiple of it (zeros at
        the end), e.g. the size of a mesh axis that the buffers are split over.
        """
        leaves, treedef = jax.tree.flatten(tree)
        slots = []
        sizes: dict[str, int] = {}
        for leaf in leaves:
            leaf = as_array_leaf(leaf)
            if not is_trainable(leaf):
                slots.append(_Slot("", 0, tuple(jnp.shape(leaf))))
                continue
            name = jnp.dtype(leaf.dtype).name
            offset = sizes.get(name, 0)
            slots.append(_Slot(name, offset, tuple(leaf.shape)))
            sizes[name] = offset + math.prod(leaf.shape)
        sizes = {name: -(-size // pad_to) * pad_to for name, size in sizes.items()}
        return cls(treedef, tuple(slots), sizes)

    def group_leaves(self, name: str, buffer: jax.Array) -> list:
        """The leaves (reshaped) that the buffer of dtype group ``name`` holds, in order."""
        slots = [s for s in self.slots if s.group == name]
        if _flat.is_concrete(buffer):
            return _flat.split(buffer, [s.offset for s in slots], [s.shape for s in slots])
        sizes = [math.prod(s.shape) for s in slots]
        padding = self.sizes[name] - sum(sizes)
        parts = jax.lax.split(buffer, sizes + [padding] if padding else sizes)
        return [x.reshape(s.shape) for x, s in zip(parts, slots, strict=False)]

    def unflatten(self, flat: dict[str, Any]) -> Any:
        """The params tree that ``flat`` holds (the buffers split, and reshaped).

        One ``lax.split`` per buffer, whose gradient is one concatenation: slicing
        each leaf out instead makes the gradient a sum of one padded, full-size
        buffer per leaf (1,000 leaves of 1,024 values: 10 s per step instead of 7 ms).
        Outside a trace, one small jitted slice per leaf instead (``_flat.py``: an eager
        split compiles one computation with a result per leaf, minutes at 10,000).
        """
        parts = {name: iter(self.group_leaves(name, flat[name])) for name in self.sizes}
        others = iter(flat.get("other", ()))
        leaves = [next(parts[s.group]) if s.group else next(others) for s in self.slots]
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
                groups[slot.group].append(leaf)
        concrete = _flat.is_concrete(leaves)  # eager: linear in the leaves (_flat.py)
        flat: dict[str, Any] = {}
        for name, parts in groups.items():
            padding = self.sizes[name] - sum(math.prod(jnp.shape(x)) for x in parts)
            if padding:
                dtype = jnp.result_type(*parts)
                zeros = np.zeros if concrete else jnp.zeros
                parts = [*parts, zeros(padding, dtype)]
            flat[name] = (
                jnp.ravel(parts[0]) if len(parts) == 1
                else _flat.concatenate(parts, self.sizes[name], name) if concrete
                else jnp.concatenate([jnp.ravel(x) for x in parts])
            )
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
    layout = FlatLayout.of(params)
    return layout.flatten(params), layout
