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

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import zeros_like_tree


def float_dtype() -> Any:
    """The default float dtype: float64 when ``jax_enable_x64`` is on, else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def init_hyperparams(**specs: Any) -> dict[str, jax.Array]:
    """Values at step 0 of each hyperparameter (a number or a schedule)."""
    count = jnp.zeros([], jnp.int32)
    # A new buffer per value (copy=True): an array given by the caller, or one array given
    # for two hyperparameters, must not end up under two state fields (donation).
    return {
        name: jnp.array(spec(count) if callable(spec) else spec, float_dtype(), copy=True)
        for name, spec in specs.items()
    }


def init_state(state_cls: Callable[..., Any], specs: Mapping[str, Any], *dtypes: Any):
    """The ``init`` of a state ``state_cls(count, hyperparams, *trees)``: count 0, the
    step-0 values of ``specs`` (:func:`init_hyperparams`), and one zero tree like the
    params per entry of ``dtypes`` (``None``: the params' dtype)."""

    def init_fn(params):
        return state_cls(
            jnp.zeros([], jnp.int32),
            init_hyperparams(**specs),
            *(zeros_like_tree(params, dtype) for dtype in dtypes),
        )

    return init_fn


def current_hyperparams(
    specs: Mapping[str, Any], stored: Mapping[str, jax.Array], count: jax.Array
) -> dict[str, jax.Array]:
    """The values to use at this step: schedules at ``count``, numbers from state.

    Inside :func:`checkify_hyperparams` each value is also checked against its
    rule at run time.
    """
    if not isinstance(stored, Mapping) or not set(specs) <= set(stored):
        raise ValueError(
            f"the optimizer state does not match this transformation: it holds the "
            f"hyperparameters {sorted(stored) if isinstance(stored, Mapping) else stored!r}, "
            f"this transformation uses {sorted(specs)}. Was it initialised by this optimizer?"
        )
    values = {
        name: jnp.asarray(spec(count), float_dtype()) if callable(spec) else stored[name]
        for name, spec in specs.items()
    }
    if _RUNTIME_CHECKS:
        for name, value in values.items():
            _runtime_check(name, value)
    return values


_RUNTIME_CHECKS = False


def _runtime_check(name: str, value: jax.Array) -> None:
    from jax.experimental import checkify

    rule = v.hyperparam_rule(name)
    checkify.check(
        rule.holds(value), f"hyperparameter {name} must be {rule.describe()}, got {{}}", value
    )


def checkify_hyperparams(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every hyperparameter value checked at run time (opt-in; for use under jit).

    Constructors check numbers and schedules (at step 0) when the optimizer is
    built, and :func:`set_hyperparams` checks the numbers it is given, but inside
    ``jit`` a schedule's later values and a traced value written into the state
    cannot be inspected. Wrapping an *un-jitted* step function (for example
    ``aj.make_step(tx, jit=False)``) checks, at every step, each value the
    optimizer reads (schedules' and the state's) against its rule with
    :mod:`jax.experimental.checkify`. The wrapped function returns
    ``(error, result)``; ``error.throw()`` raises a ``JaxRuntimeError`` naming
    the hyperparameter and its value. Jit the wrapped function, not ``fn``: a
    step jitted before wrapping is cached without the checks.

    >>> import jax, jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(lambda step: jnp.where(step < 1, 0.1, -0.1))   # negative from step 1 on
    >>> step = jax.jit(aj.checkify_hyperparams(aj.make_step(tx, jit=False)))
    >>> params = {"w": jnp.ones(1)}
    >>> err, (params, state) = step(params, tx.init(params), {"w": jnp.ones(1)})
    >>> err.get() is None
    True
    >>> err, _ = step(params, state, {"w": jnp.ones(1)})
    >>> "learning_rate must be a number in [0, inf]" in err.get()
    True
    """
    from jax.experimental import checkify

    def checked(*args, **kwargs):
        global _RUNTIME_CHECKS
        before, _RUNTIME_CHECKS = _RUNTIME_CHECKS, True
        try:
            return fn(*args, **kwargs)
        finally:
            _RUNTIME_CHECKS = before

    return checkify.checkify(checked, errors=checkify.user_checks)


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
    state path and the name; a name that occurs once is keyed by the bare name.
    Values are arrays, also when the state lives in framework containers (the
    ``OptArray`` variables of ``nnx.Optimizer.opt_state``).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1, momentum=0.9)
    >>> hp = aj.get_hyperparams(tx.init({"w": jnp.zeros(2)}))
    >>> round(float(hp["learning_rate"]), 6), round(float(hp["momentum"]), 6)
    (0.1, 0.9)
    >>> groups = aj.partition({"head": aj.sgd(0.1), "body": aj.adam(0.2)}, {"w": "head"})
    >>> sorted(aj.get_hyperparams(aj.chain(aj.clip(1.0), groups).init({"w": jnp.zeros(2)})))
    ["[1].inner_states['body'].inner_state[1]/learning_rate",
     "[1].inner_states['head'].inner_state[0]/learning_rate", 'b1', 'b2']
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
        (name if counts[name] == 1 else f"{path}/{name}"): jnp.asarray(value)
        for path, name, value in found
    }


def set_hyperparams(opt_state: Any, **values: Any) -> Any:
    """Returns ``opt_state`` with the named hyperparameters replaced.

    A bare name (``learning_rate=0.01``) replaces that hyperparameter everywhere
    in the state; a key as :func:`get_hyperparams` reports it for a name that
    occurs several times (``**{"[1].inner_states['head'].inner_state[0]/learning_rate": 0.01}``)
    replaces that occurrence only, so
    ``set_hyperparams(s, **{k: f(v) for k, v in get_hyperparams(s).items()})``
    round-trips. Raises ``KeyError`` for a name found nowhere in the state.

    Each value is checked with the rule the constructor applies to that
    hyperparameter (a ``ValueError`` naming it, the value and the allowed range),
    in the dtype it is stored in; a traced value (inside ``jit``) cannot be
    inspected: see :func:`checkify_hyperparams`.

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
                    old = hp[name]
                    # The constructor's rule, in the dtype the value is stored and used in.
                    v.hyperparam_rule(name, type(node).__name__)._replace(
                        allow_schedule=False
                    ).check(
                        key, values[key], dtype=old.dtype
                    )
                    # A new buffer each time: one value set in several places must not
                    # become one buffer under several fields (donation).
                    hp[name] = jnp.array(values[key], old.dtype, copy=True).reshape(old.shape)
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


def with_hyperparams_of(restored_state: Any, fresh_state: Any) -> Any:
    """``restored_state`` with every hyperparameter taken from ``fresh_state``.

    Hyperparameters live in the optimizer state, so a state restored from a
    checkpoint carries the learning rate, momentum, betas (and plateau scale)
    of the run that saved it, and *keeps them* even when the optimizer is now
    built with other values (as torch's ``load_state_dict`` does; optax, whose
    numbers are constants of the update, takes the new ones). To resume with
    the new optimizer's hyperparameters instead::

        state = restore(checkpoint, target=tx.init(params))      # e.g. orbax
        state = aj.with_hyperparams_of(state, tx.init(params))   # tx's lr, momentum, ...

    Moments, step counts and every other array come from ``restored_state``.
    The two states must have the same structure (a ``ValueError`` names the
    first path where they differ). Hyperparameters given as schedules are
    recomputed from the step count at the next update either way.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> params = {"w": jnp.zeros(2)}
    >>> restored = aj.sgd(0.1, momentum=0.9).init(params)      # saved by the old run
    >>> tx = aj.sgd(0.01, momentum=0.5)                         # the new run's optimizer
    >>> state = aj.with_hyperparams_of(restored, tx.init(params))
    >>> round(float(aj.get_hyperparams(state)["learning_rate"]), 6)
    0.01
    """
    from accel_jax.base import check_structure

    is_node = _has_hyperparams
    got = jax.tree_util.tree_flatten_with_path(restored_state, is_leaf=is_node)[0]
    new = jax.tree_util.tree_flatten_with_path(fresh_state, is_leaf=is_node)[0]
    restored_nodes = [(p, n) for p, n in got if is_node(n)]
    fresh_nodes = [(p, n) for p, n in new if is_node(n)]
    try:
        check_structure(fresh_state, restored_state, "the restored state")
    except ValueError as e:
        raise ValueError(f"with_hyperparams_of: {e}") from None
    for (path, a), (_, b) in zip(restored_nodes, fresh_nodes, strict=True):
        if set(a.hyperparams) != set(b.hyperparams):
            raise ValueError(
                f"with_hyperparams_of: at path {jax.tree_util.keystr(path)} the restored state "
                f"holds {sorted(a.hyperparams)}, the new one {sorted(b.hyperparams)}."
            )
    fresh = iter(fresh_nodes)

    def take(node):
        if not is_node(node):
            return node
        _, source = next(fresh)
        return node._replace(
            hyperparams={
                name: jnp.array(source.hyperparams[name], value.dtype, copy=True).reshape(
                    value.shape
                )
                for name, value in node.hyperparams.items()
            }
        )

    return jax.tree.map(take, restored_state, is_leaf=is_node)
