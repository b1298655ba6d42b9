"""Performance scheduling: reduce the step size when a monitored value stops improving."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, apply_updates, compute_dtype, leafwise
from accel_jax.hyperparams import float_dtype, increment

PLATEAU_CONVENTIONS = ("torch", "keras")


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`; every field is an array.

    ``hyperparams["scale"]`` (also ``state.scale``) is the factor the updates are
    multiplied by, reported by :func:`accel_jax.get_hyperparams` as ``"scale"``.
    """

    count: jax.Array  # int32: values received
    hyperparams: dict[str, jax.Array]  # {"scale": current scale}
    best_value: jax.Array  # best (window-averaged) value so far
    plateau_count: jax.Array  # int32: evaluations without improvement (torch: num_bad_epochs)
    cooldown_count: jax.Array  # int32: evaluations of cooldown left
    accumulated_value: jax.Array  # sum of the values of the current window
    last_value: jax.Array  # the value fed with the previous update
    repeats: jax.Array  # int32: updates in a row whose value equalled the previous one

    @property
    def scale(self) -> jax.Array:
        return self.hyperparams["scale"]


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float | None = None,
    atol: float | None = None,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    *,
    mode: str = "min",
    threshold: float = 1e-4,
    threshold_mode: str | None = None,
    convention: str | None = None,
) -> GradientTransformationExtraArgs:
    """Performance scheduling: multiplies the updates by a scale that drops on plateaus.

    ``update(updates, state, params, value=v)`` takes the monitored value ``v``
    (a loss for ``mode="min"``, an accuracy for ``mode="max"``) and multiplies the
    updates by the current ``scale`` (1 at first). Every ``accumulation_size``
    updates the mean of the values fed is one *evaluation*, judged as torch's
    ``ReduceLROnPlateau`` judges one epoch:

    * it *improves* on the best evaluation so far when
      ``value < best - margin`` (``mode="min"``) or ``value > best + margin``
      (``"max"``), with ``margin = threshold * |best|`` (``threshold_mode="rel"``)
      or ``margin = threshold`` (``"abs"``); the first evaluation always improves,
      and a NaN never does;
    * after ``patience + 1`` evaluations in a row without improvement the scale is
      multiplied by ``factor`` (never below ``min_scale``) and the next
      ``cooldown`` evaluations are not counted.

    The decision on the value fed with an update applies to that update. Placed
    last in a chain the scale multiplies the whole step, which is lowering the
    learning rate. The scale is ``state.scale`` and ``get_hyperparams(state)["scale"]``
    (the effective learning rate is ``learning_rate * scale``);
    ``set_hyperparams(state, scale=1.0)`` resets it.

    **Negative values.** torch's relative threshold compares with
    ``best * (1 - threshold)``, which lies *above* a negative ``best``, so torch
    counts a worse negative value as an improvement and never reduces. Here the
    margin is ``threshold * |best|``: the same as torch for positive values,
    correct for negative ones. The absolute threshold is the same in both.

    ``convention="keras"`` reads ``patience`` and ``cooldown`` as Keras'
    ``ReduceLROnPlateau`` does (it reduces after ``patience`` evaluations without
    improvement, and its cooldown spans one evaluation less) and defaults to
    ``threshold_mode="abs"`` (Keras' ``min_delta``); otherwise the semantics are
    torch's (``threshold_mode="rel"`` by default). Exactly: Keras' ``patience=p,
    cooldown=c`` is torch's ``patience=max(p - 1, 0), cooldown=max(c - 1, 0)``.
    torch's ``min_lr`` is ``min_scale * lr``; torch's ``eps`` is not used.

    ``convention="optax"``, implied by optax's arguments ``rtol``/``atol``, is
    optax's ``contrib.reduce_on_plateau`` (its signature, counting, and state
    layout ``ReduceLROnPlateauState``): improvement is
    ``a < (1 - rtol) * best - atol`` and the scale drops after ``patience`` bad
    evaluations (one sooner than torch). Without them the default is torch's.

    **Feed one new value per evaluation.** A validation loss measured once per
    epoch must not be fed unchanged at every step with ``accumulation_size=1``:
    each repeat would count as an evaluation without improvement, and the scale
    would collapse within the first epoch. Feed it with ``accumulation_size`` set
    to the steps per epoch (the repeats average to one evaluation), or feed the
    training loss of each step. When a reduction follows a run of at least
    ``max(patience + 2, 3)`` identical values, a :class:`PlateauRepeatWarning`
    says so (at run time, also under ``jit``), naming this likely misuse.

    Under ``pmap`` or ``shard_map`` feed the same value on every device (a
    ``pmean`` of the loss). Flax's ``TrainState.apply_gradients`` does not forward
    ``value=``: use :func:`apply_gradients` (``nnx.Optimizer.update(model, grads,
    value=loss)`` does forward it).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.chain(aj.sgd(0.1), aj.reduce_on_plateau(factor=0.5, patience=0))
    >>> params = {"w": jnp.ones(1)}
    >>> state = tx.init(params)
    >>> for loss in [1.0, 0.5, 0.6, 0.7]:
    ...     updates, state = tx.update({"w": jnp.ones(1)}, state, params, value=loss)
    >>> float(aj.get_hyperparams(state)["scale"]), updates["w"].tolist()
    (0.25, [-0.02500000037252903])
    """
    if convention is None:
        convention = "optax" if rtol is not None or atol is not None else "torch"
    v.check_choice("convention", convention, (*PLATEAU_CONVENTIONS, "optax"))
    if convention == "optax":
        from accel_jax.transforms.plateau_optax import optax_reduce_on_plateau

        return optax_reduce_on_plateau(
            factor, patience, 1e-4 if rtol is None else rtol, 0.0 if atol is None else atol,
            cooldown, accumulation_size, min_scale,
        )
    if rtol is not None or atol is not None:
        raise ValueError(
            f"rtol/atol are optax's arguments (convention='optax'); with convention="
            f"{convention!r} use threshold and threshold_mode."
        )
    v.check_choice("mode", mode, ("min", "max"))
    if threshold_mode is None:
        threshold_mode = "abs" if convention == "keras" else "rel"
    v.check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
    v.check_number("factor", factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    v.check_number("patience", patience, lo=0.0, integer=True)
    v.check_number("cooldown", cooldown, lo=0.0, integer=True)
    v.check_number("threshold", threshold, lo=0.0)
    v.check_number("min_scale", min_scale, lo=0.0, hi=1.0)
    v.check_number("accumulation_size", accumulation_size, lo=1.0, integer=True)
    if convention == "keras":
        patience, cooldown = max(patience - 1, 0), max(cooldown - 1, 0)
    sign = 1.0 if mode == "min" else -1.0  # judge -value in max mode

    def init_fn(params):
        del params
        dt = float_dtype()
        # One new buffer per field: a donated step must never see one buffer twice.
        return ReduceOnPlateauState(
            count=jnp.zeros([], jnp.int32),
            hyperparams={"scale": jnp.ones([], dt)},
            best_value=jnp.full([], sign * jnp.inf, dt),
            plateau_count=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            accumulated_value=jnp.zeros([], dt),
            last_value=jnp.full([], jnp.nan, dt),
            repeats=jnp.zeros([], jnp.int32),
        )

    def evaluate(state, current):
        """One evaluation: torch's ``ReduceLROnPlateau.step`` with a sign-correct margin."""
        best = state.best_value
        if threshold_mode == "rel":  # no margin before the first evaluation (best = +-inf)
            margin = threshold * jnp.abs(jnp.where(jnp.isfinite(best), best, 0.0))
        else:
            margin = jnp.asarray(threshold, best.dtype)
        better = sign * current < sign * best - margin
        plateau = jnp.where(better, 0, increment(state.plateau_count))
        in_cooldown = state.cooldown_count > 0
        plateau = jnp.where(in_cooldown, 0, plateau)
        cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
        reduce = plateau > patience
        scale = state.scale
        scale = jnp.where(reduce, jnp.maximum(scale * factor, jnp.asarray(min_scale, scale.dtype)),
                          scale)
        return state._replace(
            hyperparams={**state.hyperparams, "scale": scale},
            best_value=jnp.where(better, current, best),
            plateau_count=jnp.where(reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(reduce, cooldown, cooldown_count).astype(jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau needs the monitored value: call "
                "tx.update(updates, state, params, value=loss). Flax's "
                "TrainState.apply_gradients does not forward it; use "
                "accel_jax.apply_gradients(train_state, grads, value=loss)."
            )
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"reduce_on_plateau: value must be a scalar, got shape {jnp.shape(value)}."
            )
        dt = float_dtype()
        count = increment(state.count)
        value = jnp.asarray(value).astype(dt)
        total = state.accumulated_value + value
        repeats = jnp.where(value == state.last_value, increment(state.repeats), 0)
        state = state._replace(count=count, accumulated_value=total, last_value=value,
                               repeats=repeats.astype(jnp.int32))
        judged = evaluate(state, total / accumulation_size)._replace(
            accumulated_value=jnp.zeros([], dt))
        window_done = count % accumulation_size == 0
        reduced = window_done & (judged.scale < state.scale)
        if accumulation_size == 1:  # a repeated value per update is this misuse's signature
            suspicious = reduced & (repeats >= max(patience + 1, 2))
            jax.lax.cond(suspicious, lambda: jax.debug.callback(_warn_repeats, repeats),
                         lambda: None)
        state = jax.tree.map(lambda a, b: jnp.where(window_done, a, b), judged, state)
        scale = state.scale
        def rescale(g):
            dt = compute_dtype(g)
            return (g.astype(dt) * scale.astype(dt)).astype(g.dtype)

        updates = jax.tree.map(leafwise(rescale), updates)
        return updates, state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class PlateauRepeatWarning(UserWarning):
    """:func:`reduce_on_plateau` reduced its scale after a run of identical values."""


def _warn_repeats(repeats) -> None:
    warnings.warn(
        f"reduce_on_plateau reduced the scale after {int(repeats) + 1} identical values in "
        "a row: a value measured once per epoch (a validation loss) fed at every step "
        "counts as one evaluation per step. Set accumulation_size to the steps per epoch, "
        "or feed a value that is new at every update.",
        PlateauRepeatWarning,
        stacklevel=2,
    )


def apply_gradients(train_state: Any, grads: Any, **extra_args: Any) -> Any:
    """``train_state.apply_gradients(grads=grads)`` that forwards ``**extra_args`` to ``tx.update``.

    Flax's ``TrainState.apply_gradients`` calls ``tx.update(grads, opt_state,
    params)`` without extra arguments, so a transformation that needs one (the
    monitored ``value=`` of :func:`reduce_on_plateau`) cannot receive it. This
    function does the same work with the extra arguments forwarded, on any object
    with ``tx``, ``params``, ``opt_state``, ``step`` and ``replace`` (Flax's
    ``TrainState`` and subclasses)::

        state = aj.apply_gradients(state, grads, value=loss)   # inside the jitted step

    It returns ``train_state.replace(step=step + 1, params=..., opt_state=...)``.
    """
    updates, opt_state = train_state.tx.update(
        grads, train_state.opt_state, train_state.params, **extra_args
    )
    return train_state.replace(
        step=train_state.step + 1,
        params=apply_updates(train_state.params, updates),
        opt_state=opt_state,
    )
