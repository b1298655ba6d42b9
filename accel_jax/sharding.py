"""Optimizer-state shardings derived from the params' shardings (follow, ZeRO-1, host offload).

:func:`state_shardings` returns one ``NamedSharding`` per leaf of ``tx.init(params)``,
found from ``jax.eval_shape`` (nothing is computed or allocated); :func:`sharded_init`
runs ``tx.init`` under ``jax.jit`` with those shardings as ``out_shardings``, so every
state leaf is created directly in its shards and is never materialized on one device.
The rule works for every transformation, wrapper and combinator, because it reads only
the state's tree paths and shapes:

1. **Which param a state leaf belongs to**: the param whose tree path (key names)
   occurs in the leaf's path (``[0].mu['dense']['w']`` belongs to ``['dense']['w']``;
   ``[0].mu['w'].codes`` of an 8-bit state to ``['w']``); the longest such path wins.
   A leaf at no param's path (step counts, hyperparameters, flat buffers) belongs to
   none.
2. **Which of its axes are the param's axes**: all of them, in order, when the leaf
   has the param's shape (moments, Muon's momentum, schedule-free's ``z``).
   Otherwise ``init`` is evaluated abstractly once more per param axis ``k`` with
   that axis one longer: a leaf axis that grows by exactly one is the param's axis
   ``k`` (Adafactor's row and column factors, the param's shape with one axis
   dropped, even when the param is square). If that probe fails or changes the
   state's structure, a leaf whose shape is the param's with one axis dropped maps
   the remaining axes.
3. **follow**: a mapped leaf axis takes the param axis's mesh axes when its length
   divides by their size, else it is replicated. A leaf at a param's position with no
   mapped axis (an 8-bit moment's ``[blocks, block_size]`` codes and its scales, in
   C order over the flattened param) splits its leading axis over all the mesh axes
   the param is split over, when that divides; else it is replicated. Scalars and
   leaves at no param's path are replicated.
4. **zero1** (Rajbhandari et al., "ZeRO", 2020, stage 1): the follow layout, then
   every leaf with an axis whose length divides is additionally split over
   ``data_axis`` (the first free axis that divides; else the first model-split axis
   that still divides; else left as it is). Leaves already split over ``data_axis``
   (params sharded over it, as in FSDP) are unchanged.

The layout only decides where state lives: ``jax.jit`` with these shardings computes
the same numbers as one device (global reductions such as global-norm clipping, trust
ratios and Muon's orthogonalization see the whole array; XLA inserts the collectives).

``memory_kind="pinned_host"`` keeps the state in host memory where the devices have
that memory kind (TPU, GPU, and the CPU backend of recent jaxlib, where host and
device memory are the same RAM); :func:`offload_state` streams it to the devices for
each update and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    forward_params_tree,
)

MODES = ("follow", "zero1")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _names(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in path)


def _abstract(tree: Any) -> Any:
    def one(x):
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)
        return jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x))

    return jax.tree.map(one, tree)


def _is_spec_leaf(x: Any) -> bool:
    return isinstance(x, (PartitionSpec, Sharding)) or x is None


def _param_shardings(params: Any, param_shardings: Any, mesh: Mesh | None) -> list:
    """One NamedSharding (or None: unknown) per param leaf, in ``tree.leaves`` order."""
    leaves = jax.tree.leaves(params)
    if param_shardings is None:
        given = [getattr(x, "sharding", None) for x in leaves]
    elif _is_spec_leaf(param_shardings):
        given = [param_shardings] * len(leaves)
    else:
        given = jax.tree.leaves(param_shardings, is_leaf=_is_spec_leaf)
        if len(given) != len(leaves):
            raise ValueError(
                f"param_shardings must be one sharding / PartitionSpec or a tree like the "
                f"params; got {len(given)} leaves for {len(leaves)} params."
            )
    out = []
    for s in given:
        if isinstance(s, PartitionSpec):
            if mesh is None:
                raise ValueError("param_shardings given as PartitionSpecs need mesh=...")
            s = NamedSharding(mesh, s)
        elif s is not None and not isinstance(s, NamedSharding):
            s = None  # single-device or other shardings: treated as replicated
        out.append(s)
    return out


def _mesh_of(shardings: list, mesh: Mesh | None) -> Mesh:
    if mesh is not None:
        return mesh
    for s in shardings:
        if s is not None:
            return s.mesh
    return Mesh(np.array(jax.devices()[:1]), ("replica",))


def _entry_size(mesh: Mesh, entry: Any) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def _entry_names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return entry if isinstance(entry, tuple) else (entry,)


def _padded_spec(spec: PartitionSpec, ndim: int) -> list:
    entries = list(spec) + [None] * (ndim - len(spec))
    return entries[:ndim]


def _match_params(state_paths: list, param_paths: dict) -> list:
    """For each state path, the index of the param whose path it contains (longest), or None."""
    out = []
    for names in state_paths:
        best = None
        for length in range(len(names), -1, -1):
            for start in range(len(names) - length, -1, -1):  # rightmost first
                idx = param_paths.get(names[start:start + length])
                if idx is not None:
                    best = idx
                    break
            if best is not None:
                break
        out.append(best)
    return out


def _drop_one_axis(leaf_shape: tuple, param_shape: tuple) -> dict | None:
    """Leaf axis -> param axis when the leaf is the param with one axis dropped (last first)."""
    if len(leaf_shape) != len(param_shape) - 1:
        return None
    for dropped in reversed(range(len(param_shape))):
        if tuple(param_shape[:dropped] + param_shape[dropped + 1:]) == tuple(leaf_shape):
            return {j: (j if j < dropped else j + 1) for j in range(len(leaf_shape))}
    return None


def _probe_axis_maps(init, abstract_params, base_flat, base_treedef, todo, owners, p_shapes):
    """Leaf axis -> param axis for the leaves in ``todo``, from inits with one axis longer."""
    maps: dict[int, dict[int, int]] = {i: {} for i in todo}
    failed: set[int] = set()
    max_ndim = max(len(p_shapes[owners[i]]) for i in todo)
    for k in range(max_ndim):
        grown = jax.tree.map(
            lambda p, k=k: jax.ShapeDtypeStruct(
                tuple(d + (a == k) for a, d in enumerate(p.shape)), p.dtype),
            abstract_params,
        )
        try:
            flat, treedef = jax.tree.flatten(jax.eval_shape(init, grown))
        except Exception:  # noqa: BLE001 - an init that rejects the probe shapes
            return None
        if treedef != base_treedef:
            return None
        for i in todo:
            if len(p_shapes[owners[i]]) <= k:
                continue
            old, new = tuple(base_flat[i].shape), tuple(flat[i].shape)
            if len(old) != len(new):
                failed.add(i)
                continue
            changed = [j for j in range(len(old)) if old[j] != new[j]]
            if len(changed) == 1 and new[changed[0]] == old[changed[0]] + 1:
                if changed[0] in maps[i]:  # grows with two param axes: a flattened layout
                    failed.add(i)
                maps[i][changed[0]] = k
            elif changed:
                failed.add(i)
    return {i: (None if i in failed else m) for i, m in maps.items()}


def state_shardings(
    tx: GradientTransformation,
    params: Any,
    param_shardings: Any = None,
    *,
    mode: str = "follow",
    mesh: Mesh | None = None,
    data_axis: str = "data",
    memory_kind: str | None = None,
) -> Any:
    """The sharding of every leaf of ``tx.init(params)``, derived from the params' shardings.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct``s; ``param_shardings`` is a
    tree like the params (or one value for all) of ``NamedSharding``s or, with
    ``mesh``, ``PartitionSpec``s; by default each param's own ``.sharding``. ``mode``:
    ``"follow"`` (state split like its param) or ``"zero1"`` (also split over
    ``data_axis`` where a dimension divides; needs a mesh with that axis).
    ``memory_kind``: e.g. ``"pinned_host"`` to keep the state in host memory. The
    rule is in the module docstring. Nothing is computed or allocated.

    >>> import jax, jax.numpy as jnp, numpy as np, accel_jax as aj
    >>> from jax.sharding import Mesh, PartitionSpec as P
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    >>> s = aj.state_shardings(aj.adam(1e-3), {"w": jnp.ones((4, 2))}, P(), mesh=mesh,
    ...                        mode="zero1")
    >>> s[0].mu["w"].spec, s[0].count.spec
    (P('data',), P())
    """
    v.check_choice("mode", mode, MODES)
    init = getattr(tx, "init", tx)
    shardings = _param_shardings(params, param_shardings, mesh)
    mesh = _mesh_of(shardings, mesh)
    if mode == "zero1" and data_axis not in mesh.axis_names:
        raise ValueError(
            f"data_axis={data_axis!r} is not an axis of the mesh {dict(mesh.shape)}; "
            "mode='zero1' splits the state over it (pass mesh= or data_axis=)."
        )
    if memory_kind is not None:
        kinds = sorted({m.kind for d in mesh.devices.flat for m in d.addressable_memories()})
        if memory_kind not in kinds:
            platform = mesh.devices.flat[0].platform
            raise ValueError(
                f"memory_kind={memory_kind!r} is not supported by the {platform} devices of "
                f"this mesh; they have {kinds}. Keep memory_kind=None (state in"
                " device memory) on this backend."
            )

    abstract_params = _abstract(params)
    p_flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    p_shapes = [tuple(p.shape) for _, p in p_flat]
    p_specs = [
        _padded_spec(s.spec, len(shape)) if s is not None else [None] * len(shape)
        for s, shape in zip(shardings, p_shapes, strict=True)
    ]
    param_paths: dict[tuple, int] = {}
    for i, (path, _) in enumerate(p_flat):
        param_paths.setdefault(_names(path), i)

    abstract_state = jax.eval_shape(init, abstract_params)
    s_flat_paths, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    s_leaves = [leaf for _, leaf in s_flat_paths]
    owners = _match_params([_names(p) for p, _ in s_flat_paths], param_paths)

    axis_maps: dict[int, dict[int, int] | None] = {}
    todo = []
    for i, (leaf, owner) in enumerate(zip(s_leaves, owners, strict=True)):
        shape = tuple(leaf.shape)
        if owner is None or not shape:
            continue
        if shape == p_shapes[owner]:
            axis_maps[i] = {j: j for j in range(len(shape))}
        else:
            todo.append(i)
    if todo:
        probed = _probe_axis_maps(init, abstract_params, s_leaves, treedef, todo, owners, p_shapes)
        for i in todo:
            m = probed.get(i) if probed is not None else None
            if not m:
                m = _drop_one_axis(tuple(s_leaves[i].shape), p_shapes[owners[i]])
            axis_maps[i] = m

    def spec_of(i: int, leaf) -> PartitionSpec:
        shape = tuple(leaf.shape)
        entries: list = [None] * len(shape)
        owner = owners[i]
        if owner is not None and shape:
            pspec = p_specs[owner]
            amap = axis_maps.get(i)
            if amap:
                for j, k in amap.items():
                    if pspec[k] is not None and shape[j] % _entry_size(mesh, pspec[k]) == 0:
                        entries[j] = pspec[k]
            else:  # same data, another layout (8-bit blocks): split the leading axis
                names = tuple(n for e in pspec for n in _entry_names(e))
                if names and shape[0] % _entry_size(mesh, names) == 0:
                    entries[0] = names if len(names) > 1 else names[0]
        if mode == "zero1" and shape:
            used = {n for e in entries for n in _entry_names(e)}
            if data_axis not in used:
                _add_data_axis(entries, shape, mesh, data_axis)
        if owner is not None and shape == p_shapes[owner] and entries == p_specs[owner]:
            raw = shardings[owner]
            return raw.spec if raw is not None else PartitionSpec()  # the param's own spec
        while entries and entries[-1] is None:
            entries.pop()
        return PartitionSpec(*entries)

    specs = [spec_of(i, leaf) for i, leaf in enumerate(s_leaves)]
    kind = {} if memory_kind is None else {"memory_kind": memory_kind}
    return jax.tree.unflatten(treedef, [NamedSharding(mesh, s, **kind) for s in specs])


def _add_data_axis(entries: list, shape: tuple, mesh: Mesh, data_axis: str) -> None:
    n = mesh.shape[data_axis]
    for j, e in enumerate(entries):
        if e is None and shape[j] % n == 0:
            entries[j] = data_axis
            return
    for j, e in enumerate(entries):
        if e is not None and shape[j] % (_entry_size(mesh, e) * n) == 0:
            entries[j] = (*_entry_names(e), data_axis)
            return


def sharded_init(
    tx: GradientTransformation,
    params: Any,
    param_shardings: Any = None,
    **kwargs: Any,
) -> Any:
    """``tx.init(params)`` created directly in :func:`state_shardings` (same arguments).

    The jitted ``init`` writes each device's shards only: no state leaf is ever whole
    on one device (in a multi-process run, each process creates its own shards).
    """
    shardings = state_shardings(tx, params, param_shardings, **kwargs)
    return jax.jit(tx.init, out_shardings=shardings)(params)


def with_sharded_init(
    tx: GradientTransformation, param_shardings: Any = None, **kwargs: Any
) -> GradientTransformation:
    """``tx`` whose ``init`` is :func:`sharded_init` and whose updates keep the params' layout.

    For code that calls ``tx.init`` and ``tx.update`` itself (``nnx.Optimizer``, a Flax
    ``TrainState``): the state is created in the chosen layout (``kwargs``:
    :func:`state_shardings`' keywords) and each update is constrained to its param's
    sharding (``param_shardings``, or the params' own shardings seen by ``init``), so
    applying it never changes the model's sharding; with ``mode="zero1"`` that
    constraint is the all-gather of the update shards.
    """
    v.check_transformation("tx", tx)
    known: dict[str, Any] = {}

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        if param_shardings is None:
            shardings = [getattr(x, "sharding", None) for x in leaves]
            shardings = [s if isinstance(s, NamedSharding) else None for s in shardings]
        else:
            shardings = _param_shardings(params, param_shardings, kwargs.get("mesh"))
        known["shardings"] = shardings
        return sharded_init(tx, params, param_shardings, **kwargs)

    def update_fn(updates, state, params=None, **extra):
        if isinstance(tx, GradientTransformationExtraArgs):
            updates, state = tx.update(updates, state, params, **extra)
        else:
            updates, state = tx.update(updates, state, params)
        shardings = known.get("shardings")
        leaves, treedef = jax.tree.flatten(updates)
        if shardings is not None and len(shardings) == len(leaves):
            leaves = [
                u if s is None or not hasattr(u, "shape") or getattr(u, "dtype", None)
                == jax.dtypes.float0 else jax.lax.with_sharding_constraint(u, s)
                for u, s in zip(leaves, shardings, strict=True)
            ]
            updates = jax.tree.unflatten(treedef, leaves)
        return updates, state

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), tx)


def offload_state(tx: GradientTransformation, shardings: Any) -> GradientTransformation:
    """``tx`` with its state kept in host memory (``shardings`` from :func:`state_shardings`
    with ``memory_kind="pinned_host"``): ``update`` moves the state to the devices,
    updates it there and returns it to host memory. Use under ``jax.jit``."""
    on_device = jax.tree.map(lambda s: s.with_memory_kind("device"), shardings)

    def update_fn(updates, state, params=None, **extra):
        state = jax.device_put(state, on_device)
        if isinstance(tx, GradientTransformationExtraArgs):
            updates, state = tx.update(updates, state, params, **extra)
        else:
            updates, state = tx.update(updates, state, params)
        return updates, jax.device_put(state, shardings)

    return forward_params_tree(GradientTransformationExtraArgs(tx.init, update_fn), tx)
