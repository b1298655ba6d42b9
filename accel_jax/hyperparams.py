"""Hyperparameters that live in the optimizer state.

Every transformation with a learning rate, momentum, beta or weight decay keeps
the value it used at the last step in a ``hyperparams`` dict of its state:

* a hyperparameter given as a **schedule** (``step -> value``) is evaluated at
  the transformation's own step count, and the value used is written to state;
* a hyperparameter given as a **number** is read from state at every step, so it
  can be changed between steps with :func:`set_hyperparams` without recompiling
  (the state is an input of the jitted step, not a constant baked into it).

:func:`get_hyperparams` reads them back for logging, whatever the chain looks like.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def float_dtype() -> Any:
    """The default float dtype: float64 when ``jax_enable_x64`` is on, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def init_hyperparams(**specs: Any) -> dict[str, jax.Array]:
    """Values at step 0 of each hyperparameter (a number or a schedule)."""
    count = jnp.zeros([], jnp.int32)
    return {
        name: jnp.asarray(spec(count) if callable(spec) else spec, float_dtype())
        for name, spec in specs.items()
    }


def current_hyperparams(
    specs: Mapping[str, Any], stored: Mapping[str, jax.Array], count: jax.Array
) -> dict[str, jax.Array]:
    """The values to use at this step: schedules at ``count``, numbers from state."""
    return {
        name: jnp.asarray(spec(count), float_dtype()) if callable(spec) else stored[name]
        for name, spec in specs.items()
    }


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    limit = jnp.iinfo(jnp.int32).max
    return jnp.where(count < limit, count + 1, limit).astype(jnp.int32)


def _has_hyperparams(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields") and "hyperparams" in node._fields


def get_hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """Every hyperparameter found in ``opt_state``, as ``{name: value}``.

    The values are those the last ``update`` used (right after ``init``: those the
    first update will use), so logging ``get_hyperparams(state)`` after a step
    logs the learning rate, momentum, betas (and a plateau ``scale``) of that step,
    whatever the chain looks like, for numbers and schedules alike.

    A name that occurs in several transformations (a ``partition`` with one
    learning rate per group, say) is reported once per occurrence, keyed by the
    state path and the name (``"[1].inner_states['head'][2]/learning_rate"``);
    a name that occurs once is keyed by the bare name.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1, momentum=0.9)
    >>> hp = aj.get_hyperparams(tx.init({"w": jnp.zeros(2)}))
    >>> round(float(hp["learning_rate"]), 6), round(float(hp["momentum"]), 6)
    (0.1, 0.9)
    """
    found: list[tuple[str, str, jax.Array]] = []
    leaves = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=_has_hyperparams)[0]
    for path, node in leaves:
        if _has_hyperparams(node):
            for name, value in node.hyperparams.items():
                found.append((jax.tree_util.keystr(path), name, value))
    counts: dict[str, int] = {}
    for _, name, _ in found:
        counts[name] = counts.get(name, 0) + 1
    return {
        (name if counts[name] == 1 else f"{path}/{name}"): value for path, name, value in found
    }


def set_hyperparams(opt_state: Any, **values: Any) -> Any:
    """Returns ``opt_state`` with the named hyperparameters replaced.

    A bare name (``learning_rate=0.01``) replaces that hyperparameter everywhere
    in the state; a key as :func:`get_hyperparams` reports it for a name that
    occurs several times (``**{"[1].inner_states['head'][2]/learning_rate": 0.01}``)
    replaces that occurrence only, so
    ``set_hyperparams(s, **{k: f(v) for k, v in get_hyperparams(s).items()})``
    round-trips. Raises ``KeyError`` for a name found nowhere in the state.

    Only hyperparameters given as numbers are read back from state; one given as
    a schedule is recomputed from the step count at the next update, so setting
    it has no effect. The replaced values keep their dtype and shape, so a jitted
    step that takes the state as an argument does not recompile.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1)
    >>> state = aj.set_hyperparams(tx.init({"w": jnp.zeros(1)}), learning_rate=0.5)
    >>> tx.update({"w": jnp.ones(1)}, state)[0]["w"].tolist()
    [-0.5]
    """
    seen: set[str] = set()

    def replace(path, node):
        if not _has_hyperparams(node):
            return node
        hp = dict(node.hyperparams)
        prefix = jax.tree_util.keystr(path)
        for name in hp:
            for key in (f"{prefix}/{name}", name):
                if key in values:
                    hp[name] = jnp.asarray(values[key], hp[name].dtype).reshape(hp[name].shape)
                    seen.add(key)
                    break
        return node._replace(hyperparams=hp)

    new_state = jax.tree_util.tree_map_with_path(replace, opt_state, is_leaf=_has_hyperparams)
    missing = sorted(set(values) - seen)
    if missing:
        keys = get_hyperparams(opt_state)
        available = sorted(set(keys) | {k.rsplit("/", 1)[-1] for k in keys})
        raise KeyError(
            f"no hyperparameter named {missing} in the optimizer state; available: {available}"
        )
    return new_state
