"""Schedule-free learning: interpolation and averaging in place of momentum and a schedule.

Notation (Defazio et al., 2024): ``z`` the base optimizer's sequence (kept in the
state), ``x`` the running weighted average of ``z`` (the point to *evaluate* at),
and ``y = b1 * x + (1 - b1) * z`` the point the gradient is taken at: ``y`` is what
the training loop holds as its params. ``x`` is not stored: it is recovered from
``y`` and ``z`` (:func:`schedule_free_eval_params`), so the memory is that of the
base optimizer plus one copy of the params. The update of ``y`` is computed in one
expression, without forming ``x`` (torch's ``schedulefree`` does the same)::

    y_{t+1} - y_t = c_{t+1} (z_t - y_t) + (1 - b1 (1 - c_{t+1})) (z_{t+1} - z_t)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    check_structure,
    compute_dtype,
    forward_params_tree,
    is_trainable,
    leafwise,
    require_params,
    update_moment,
)
from accel_jax.combine import MaskedNode, _call_update
from accel_jax.hyperparams import (
    current_hyperparams,
    float_dtype,
    increment,
    init_hyperparams,
    init_state,
)
from accel_jax.transforms.adaptive import bias_correction


class ScheduleFreeAveraging(NamedTuple):
    """The averaging part of :class:`ScheduleFreeState`.

    ``hyperparams``: ``learning_rate`` and ``b1`` used last; ``max_lr``: the
    largest learning rate seen (it weights the average); ``weight_sum``: the sum
    of the averaging weights.
    """

    hyperparams: dict[str, jax.Array]
    max_lr: jax.Array
    weight_sum: jax.Array


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free`: ``count`` (steps taken), ``averaging``
    (:class:`ScheduleFreeAveraging`), ``base_optimizer_state`` and ``z`` (the base
    optimizer's sequence, in ``state_dtype``). ``b1`` is a property, so
    ``optax.contrib.schedule_free_eval_params`` reads this state too.
    """

    count: jax.Array  # int32
    averaging: ScheduleFreeAveraging
    base_optimizer_state: Any
    z: Any

    @property
    def b1(self) -> jax.Array:
        return self.averaging.hyperparams["b1"]


def _copy_tree(params: Any, dtype: Any) -> Any:
    def copy(p):
        p = jnp.asarray(p)
        want = dtype if dtype is not None and jnp.issubdtype(p.dtype, jnp.inexact) else p.dtype
        return jnp.array(p, dtype=want, copy=True)

    return jax.tree.map(copy, params)


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
    *,
    r: float = 0.0,
    base_includes_learning_rate: bool = True,
    weight_lr_at_next_step: bool = True,
) -> GradientTransformationExtraArgs:
    """Makes ``base_optimizer`` schedule-free (as ``optax.contrib.schedule_free``)::

        z_{t+1} = z_t + u_t                      (u_t: base_optimizer's update)
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = b1 x_{t+1} + (1 - b1) z_{t+1}  (the params: gradients are taken at y)
        c_{t+1} = w_{t+1} / sum_{i<=t+1} w_i,  w_t = t^r * (max_{i<=t} eta_i)^weight_lr_power

    ``learning_rate`` weights the average (``eta_i``, a number or a schedule);
    ``r`` adds polynomial weighting (schedulefree's ``r``, optax has none: 0).
    By default the base optimizer applies its own learning rate, as in optax, and
    the schedule is read at ``count + 1`` for the weights (optax's one-based step
    count) while the base reads it at ``count``; ``weight_lr_at_next_step=False``
    reads it at ``count`` for both (schedulefree, Keras).
    ``base_includes_learning_rate=False``: the base returns a *direction* ``d``
    and the wrapper steps ``u_t = -eta_t * d`` with the same rate, so the state
    holds one learning rate. The base should have no momentum (``b1`` replaces
    it). ``b1`` is a number in (0, 1) (not a schedule). Evaluate at
    :func:`schedule_free_eval_params`; checkpoint the params (``y``) and the state
    (which holds ``z``). Elementwise: flat params (:func:`accel_jax.flatten_params`)
    work.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.schedule_free(aj.sgd(0.5), learning_rate=0.5)
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> params = aj.apply_updates(params, updates)
    >>> params["w"].tolist(), state.z["w"].tolist()  # first step: x = y = z = 1 - 0.5
    ([0.5, 0.5], [0.5, 0.5])
    >>> aj.schedule_free_eval_params(state, params)["w"].tolist()
    [0.5, 0.5]

    Reference: Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
    Scheduled", NeurIPS 2024.
    """
    v.check_transformation("base_optimizer", base_optimizer)
    v.check_flags(
        base_includes_learning_rate=base_includes_learning_rate,
        weight_lr_at_next_step=weight_lr_at_next_step,
    )
    v.check_rate("learning_rate", learning_rate)
    v.check_number("b1", b1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    v.check_number("weight_lr_power", weight_lr_power, lo=0.0)
    v.check_number("r", r, lo=0.0)
    v.check_dtype("state_dtype", state_dtype)
    specs = {"learning_rate": learning_rate, "b1": b1}
    offset = 1 if weight_lr_at_next_step else 0

    def init_fn(params):
        fd = float_dtype()
        averaging = ScheduleFreeAveraging(
            init_hyperparams(**specs), jnp.zeros([], fd), jnp.zeros([], fd)
        )
        return ScheduleFreeState(
            count=jnp.zeros([], jnp.int32),
            averaging=averaging,
            base_optimizer_state=base_optimizer.init(params),
            z=_copy_tree(params, state_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, "schedule_free")
        check_structure(updates, state.z, "the optimizer state (z)")
        fd = float_dtype()
        avg = state.averaging
        hp = current_hyperparams(specs, avg.hyperparams, state.count)
        lr_avg = hp["learning_rate"]
        if callable(learning_rate) and offset:
            lr_avg = jnp.asarray(learning_rate(state.count + offset), fd)
        max_lr = jnp.maximum(avg.max_lr, lr_avg)
        t = increment(state.count)
        weight = t.astype(fd) ** jnp.asarray(r, fd) * max_lr ** jnp.asarray(weight_lr_power, fd)
        weight_sum = avg.weight_sum + weight
        c = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1), 0.0)
        base_updates, base_state = _call_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        b1_ = hp["b1"]
        step = -hp["learning_rate"]

        def z_step(u):
            dt = compute_dtype(u)
            return u if base_includes_learning_rate else (step.astype(dt) * u.astype(dt))

        def new_y(u, z, y):
            dt = compute_dtype(u, z, y)
            u, c_, b = z_step(u).astype(dt), c.astype(dt), b1_.astype(dt)
            dy = c_ * (z.astype(dt) - y.astype(dt)) + (1 - b * (1 - c_)) * u
            return dy.astype(y.dtype)

        def new_z(u, z):
            dt = compute_dtype(u, z)
            return (z.astype(dt) + z_step(u).astype(dt)).astype(z.dtype)

        new_updates = jax.tree.map(leafwise(new_y), base_updates, state.z, params)
        z = jax.tree.map(leafwise(new_z, keep=1), base_updates, state.z)
        new_state = ScheduleFreeState(
            t, ScheduleFreeAveraging(hp, max_lr, weight_sum), base_state, z
        )
        return new_updates, new_state

    return forward_params_tree(GradientTransformationExtraArgs(init_fn, update_fn), base_optimizer)


def _find_states(state: Any) -> list[ScheduleFreeState]:
    found = []

    def visit(node):
        if isinstance(node, ScheduleFreeState):
            found.append(node)
        return node

    jax.tree.map(visit, state, is_leaf=lambda n: isinstance(n, ScheduleFreeState))
    return found


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The evaluation point ``x = (y - (1 - b1) z) / b1`` of a schedule-free optimizer.

    ``params`` are the training params ``y``; ``state`` is the optimizer state (of
    :func:`schedule_free`, :func:`schedule_free_adamw`, :func:`schedule_free_sgd`,
    or any chain or wrapper holding them: in :func:`accel_jax.partition` each group's
    schedule-free state gives its own leaves). Evaluate, test and ship ``x``; keep
    training from ``y`` and the state. Same name and meaning as
    ``optax.contrib.schedule_free_eval_params``. Leaves that no schedule-free state
    covers, and non-trainable leaves, pass through.
    """
    found = _find_states(state)
    if not found:
        raise ValueError(
            "schedule_free_eval_params: state holds no ScheduleFreeState (the state of a "
            "schedule-free optimizer such as accel_jax.schedule_free_adamw)."
        )
    is_masked = lambda n: isinstance(n, MaskedNode)  # noqa: E731
    covered = jax.tree.map(lambda p: 0, params)
    x = params
    for sf in found:
        b1 = sf.b1

        def leaf(z, y, _b1=b1):
            if is_masked(z) or not is_trainable(y):
                return y
            dt = compute_dtype(y, z)
            b = _b1.astype(dt)
            return ((y.astype(dt) - (1 - b) * z.astype(dt)) / b).astype(y.dtype)

        try:
            x = jax.tree.map(leaf, sf.z, x, is_leaf=is_masked)
            covered = jax.tree.map(
                lambda z, n: n + (0 if is_masked(z) else 1), sf.z, covered, is_leaf=is_masked
            )
        except ValueError as e:
            raise ValueError(
                "schedule_free_eval_params: params do not match the optimizer state's z: "
                f"{e}"
            ) from None
    if any(n > 1 for n in jax.tree.leaves(covered)):
        raise ValueError(
            "schedule_free_eval_params: a parameter is covered by several schedule-free "
            "states (nested or chained schedule-free optimizers); its x is ambiguous."
        )
    return x


# --------------------------------------------------------------------------- base direction


class ScaleByRmsDebiasedState(NamedTuple):
    """State of :func:`scale_by_rms_debiased`: step count, ``b2`` used last, and ``nu``."""

    count: jax.Array  # int32
    hyperparams: dict[str, jax.Array]
    nu: Any


def scale_by_rms_debiased(
    b2: ScalarOrSchedule = 0.999, eps: float = 1e-8, *, nu_dtype: Any = None
) -> GradientTransformation:
    """Adam without its first moment, the direction of schedule-free AdamW::

        v_t = b2 v_{t-1} + (1 - b2) g_t^2,   u_t = g_t / (sqrt(v_t / (1 - b2^t)) + eps)

    (optax's ``scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)``),
    without the memory of a first moment that ``b1=0`` would keep.
    """
    v.check_decay("b2", b2)
    v.check_eps("eps", eps)
    v.check_dtype("nu_dtype", nu_dtype)
    specs = {"b2": b2}

    init_fn = init_state(ScaleByRmsDebiasedState, specs, nu_dtype)

    def update_fn(updates, state, params=None):
        del params
        check_structure(updates, state.nu, "the optimizer state (nu)")
        hp = current_hyperparams(specs, state.hyperparams, state.count)
        nu = update_moment(updates, state.nu, hp["b2"], 2)
        count = increment(state.count)
        bc2 = bias_correction(hp["b2"], count)

        def direction(g, n):
            dt = compute_dtype(g, n)
            den = jnp.sqrt(n.astype(dt) / bc2.astype(dt)) + jnp.asarray(eps, dt)
            return (g.astype(dt) / den).astype(g.dtype)

        updates = jax.tree.map(leafwise(direction), updates, nu)
        return updates, ScaleByRmsDebiasedState(count, hp, nu)

    return GradientTransformation(init_fn, update_fn)
