"""The learning-rate range test: train briefly with an exponentially growing learning rate."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from accel_jax import _validation as v
from accel_jax.base import GradientTransformation, apply_updates
from accel_jax.hyperparams import _has_hyperparams, float_dtype

#: The rules by which :func:`find_learning_rate` suggests a learning rate (its ``rule=``;
#: the first is the default).
SUGGESTION_RULES = ("tenth_of_minimum", "steepest")


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What :func:`find_learning_rate` measured.

    ``learning_rates[i]`` is the rate of step ``i`` and ``losses[i]`` the loss of
    that step's batch, computed before the step (so it reflects the rates of steps
    ``0 .. i-1``); ``smoothed_losses`` is their bias-corrected exponential moving
    average. ``suggestions`` holds the learning rate of each rule in
    :data:`SUGGESTION_RULES` (``nan`` when too few steps were recorded) and
    ``suggested_lr`` the one of the rule asked for. ``diverged`` says whether the
    run stopped early because the smoothed loss exploded (or a loss was not finite).
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    suggestions: dict[str, float]
    suggested_lr: float
    rule: str
    diverged: bool

    def plot(self, ax: Any = None, *, skip_start: int = 0, skip_end: int = 0) -> Any:
        """Plots the losses against the learning rate (log scale) and marks the suggestion.

        Draws on ``ax`` (a new figure when None) and returns the matplotlib Axes;
        ``skip_start`` and ``skip_end`` leave out points at either end. matplotlib
        is an optional dependency (``pip install matplotlib``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "LRFinderResult.plot() needs matplotlib, which is not installed: "
                "pip install matplotlib (or pip install 'accel_jax[examples]')."
            ) from e
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        end = len(self.learning_rates) - skip_end
        lrs = self.learning_rates[skip_start:end]
        ax.plot(lrs, self.losses[skip_start:end], alpha=0.3, label="loss")
        ax.plot(lrs, self.smoothed_losses[skip_start:end], label="smoothed loss")
        if math.isfinite(self.suggested_lr):
            ax.axvline(self.suggested_lr, color="C3", linestyle="--",
                       label=f"suggested ({self.rule}): {self.suggested_lr:.2e}")
        smoothed = self.smoothed_losses[skip_start:end]
        if np.isfinite(smoothed).any():  # raw spikes past the divergence point stay off-scale
            low = np.nanmin(np.minimum(self.losses[skip_start:end], smoothed))
            high = np.nanmax(np.where(np.isfinite(smoothed), smoothed, np.nan))
            ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        return ax


def _suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float]:
    """The suggested learning rate of each rule (see :func:`find_learning_rate`)."""
    if len(lrs) < 3:
        return dict.fromkeys(SUGGESTION_RULES, float("nan"))
    lowest = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log(lrs))
    steepest = int(np.argmin(slope[: lowest + 1]))
    return {"tenth_of_minimum": float(lrs[lowest] / 10), "steepest": float(lrs[steepest])}


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches, started again when they run out; a one-shot iterator is run once."""
    if iter(batches) is batches:
        yield from batches
        return
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _with_hyperparams_of(state: Any, source: Any) -> Any:
    """``state`` with every ``hyperparams`` dict taken from ``source`` (same structure)."""

    def take(node, src):
        return node._replace(hyperparams=src.hyperparams) if _has_hyperparams(node) else node

    return jax.tree.map(take, state, source, is_leaf=_has_hyperparams)


def find_learning_rate(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    optimizer: Callable[[Any], GradientTransformation],
    batches: Iterable[Any],
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 200,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    rule: str = "tenth_of_minimum",
) -> LRFinderResult:
    """The learning-rate range test (Smith 2017; the seeds' "train for a few hundred
    iterations with exponentially increasing learning rates").

    Trains from ``params`` for up to ``num_steps`` steps with the learning rate of
    step ``i`` growing exponentially from ``min_lr`` to ``max_lr``::

        lr_i = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))

    and records the loss of every step. Arguments:

    * ``loss_fn(params, batch) -> scalar loss``;
    * ``optimizer(learning_rate) -> transformation``, e.g. ``lambda lr: aj.sgd(lr,
      momentum=0.9)`` (optax transformations work too). It is called inside the
      jitted step with a traced learning rate, so the step compiles once for the
      whole run: the factory must not turn the rate into a Python float;
    * ``batches``: an iterable of batches, started again from the beginning when
      it runs out if it can be (a list, a data set object), else the run ends.

    The smoothed loss is the bias-corrected moving average
    ``a_i = smoothing * a_{i-1} + (1 - smoothing) * loss_i``, ``s_i = a_i / (1 -
    smoothing**(i+1))``. The run stops early (``diverged=True``) once
    ``s_i > divergence_factor * min(s)`` or a loss is not finite; the diverging
    step is recorded. Nothing passed in is modified: the training happens on
    copies and is thrown away (re-initialise with your own ``params``).

    Suggestion rules, computed on the smoothed loss:

    * ``"tenth_of_minimum"`` (default): a tenth of the rate at the minimum of the
      smoothed loss, the turning point after which the loss climbs (the seeds'
      rule of thumb). On a quadratic with largest curvature ``L`` the turning
      point lies above the stability limit ``2/L`` (divergence takes a few steps
      to show), so the suggestion falls below ``2/L`` and within a factor of 10
      of it;
    * ``"steepest"``: the rate, before the minimum, where the smoothed loss falls
      fastest per unit of ``log(lr)`` (fastai's former default). It runs low when
      ``num_steps`` is large, since the loss falls when the *sum* of the rates so
      far reaches ``1/L``, not the rate itself.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> loss = lambda p, batch: 0.5 * 4.0 * jnp.sum(p["x"] ** 2)   # L = 4: stable below 2/L
    >>> result = aj.find_learning_rate(loss, {"x": jnp.ones(3)}, aj.sgd, [None],
    ...                                min_lr=1e-4, max_lr=10.0, num_steps=100)
    >>> result.diverged, 0.05 < result.suggested_lr < 0.5
    (True, True)
    """
    v.check_number("min_lr", min_lr, lo=0.0, lo_open=True)
    v.check_number("max_lr", max_lr, lo=0.0, lo_open=True)
    if max_lr <= min_lr:
        raise ValueError(f"max_lr must be greater than min_lr, got {max_lr!r} <= {min_lr!r}.")
    v.check_number("num_steps", num_steps, lo=2.0, integer=True)
    v.check_number("smoothing", smoothing, lo=0.0, hi=1.0, hi_open=True)
    v.check_number("divergence_factor", divergence_factor, lo=1.0, lo_open=True)
    v.check_choice("rule", rule, SUGGESTION_RULES)
    if not callable(optimizer):
        raise ValueError(
            f"optimizer must be a function learning_rate -> transformation, got {optimizer!r}."
        )

    lrs = min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))

    @jax.jit
    def step(params, opt_state, batch, lr):
        tx = optimizer(lr)
        # Rates kept in the state (accel_jax's hyperparams, optax's inject_hyperparams)
        # come from this step's transformation; rates in closures are traced anyway.
        opt_state = _with_hyperparams_of(opt_state, tx.init(params))
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, loss

    # Fresh buffers: nothing the caller holds is donated, aliased or modified.
    params = jax.tree.map(jnp.array, params)
    opt_state = optimizer(jnp.asarray(min_lr, float_dtype())).init(params)
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    for i, (lr, batch) in enumerate(zip(lrs, _cycle(batches), strict=False)):
        params, opt_state, loss = step(params, opt_state, batch, jnp.asarray(lr, float_dtype()))
        losses.append(float(loss))
        average = smoothing * average + (1 - smoothing) * losses[-1]
        smoothed.append(average / (1 - smoothing ** (i + 1)))
        best = min(best, smoothed[-1])
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > divergence_factor * best:
            diverged = True
            break

    n = len(losses)
    lrs, losses_a, smoothed_a = lrs[:n], np.asarray(losses), np.asarray(smoothed)
    finite = np.isfinite(smoothed_a)
    suggestions = _suggestions(lrs[finite], smoothed_a[finite])
    return LRFinderResult(
        learning_rates=lrs,
        losses=losses_a,
        smoothed_losses=smoothed_a,
        suggestions=suggestions,
        suggested_lr=suggestions[rule],
        rule=rule,
        diverged=diverged,
    )

