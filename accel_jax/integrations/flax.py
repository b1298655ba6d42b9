"""Flax drop-ins whose update runs :func:`accel_jax.apply_step` (``aj.flax``).

``nnx.Optimizer`` and Linen's ``TrainState`` call ``tx.update`` and then
``optax.apply_updates``: XLA:CPU then makes one pass over memory per output
array (each moment, the params) and never uses accel_jax's native one-pass
kernels. :class:`Optimizer` and :class:`TrainState` are subclasses that keep
their parent's interface, state and checkpoints but run the step as
:func:`accel_jax.apply_step` (the native kernel on CPU, where it can run): swap
the class name and nothing else.

Importing ``accel_jax`` does not import Flax; ``aj.flax`` imports it on first use.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
from flax import nnx, struct
from flax.training import train_state

from accel_jax.fused import apply_step, make_step

__all__ = ["Optimizer", "TrainState"]

# tx.update -> {(kernel, donate): jitted step}, for updates called outside a trace.
_EAGER_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(*trees: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


def _step(tx, params, opt_state, grads, kernel, donate, extra_args):
    """``apply_step`` inside a trace; outside one, a cached jitted (donating) step."""
    if _traced(params, opt_state, grads, extra_args):
        return apply_step(tx, params, opt_state, grads, kernel=kernel, **extra_args)
    steps = _EAGER_STEPS.setdefault(tx.update, {})
    if (kernel, donate) not in steps:
        steps[kernel, donate] = make_step(tx, donate=donate, kernel=kernel)
    return steps[kernel, donate](params, opt_state, grads, **extra_args)


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` whose ``update`` runs the fused step (:func:`accel_jax.apply_step`).

    Same constructor (plus ``kernel`` and ``donate``), state, ``step`` counter and
    checkpoints as ``nnx.Optimizer``; ``update(model, grads)`` writes the new params
    into ``model`` and the new state into ``opt_state`` as the parent does, with
    the arithmetic of ``tx.update`` + ``apply_updates`` (bit-identical on the XLA
    path; to float32 rounding, ``rtol`` 1e-6, with the native kernel). It returns
    ``None``: the fused step never materialises the updates.

    ``kernel``: as :func:`accel_jax.apply_step` (``None``: the native CPU kernel
    where it can run safely; ``True``: required; ``False``: the XLA path).
    Inside ``nnx.jit`` the step is part of your computation: donate the model and
    optimizer (``nnx.jit(train_step, donate_argnums=(0, 1))``) for an in-place
    step. Called outside a trace, ``update`` runs a cached jitted step that, with
    ``donate=True`` (the default), updates the model's and state's buffers in place:
    arrays you took out of the model before the call are then invalid.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> opt = aj.flax.Optimizer(model, aj.sgd(0.5), wrt=nnx.Param)
    >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
    >>> opt.update(model, grads)
    >>> model.bias[...].tolist(), int(opt.step[...])
    ([-0.5], 1)
    """

    def __init__(
        self,
        model: Any,
        tx: Any,
        *,
        wrt: Any,
        graph: bool | None = None,
        kernel: bool | None = None,
        donate: bool = True,
    ):
        if not any(kernel is k for k in (None, True, False)):
            raise ValueError(f"Optimizer: kernel must be None, True or False, got {kernel!r}.")
        if not any(donate is k for k in (True, False)):
            raise ValueError(f"Optimizer: donate must be True or False, got {donate!r}.")
        super().__init__(model, tx, wrt=wrt, graph=graph)
        self.kernel = kernel
        self.donate = donate

    def update(self, model: Any, grads: Any, /, **kwargs: Any) -> None:
        """Updates ``model``'s params (those ``wrt`` selects) and the state; returns ``None``."""
        params = nnx.as_pure(nnx.state(model, self.wrt, graph=self.graph))
        grads = nnx.as_pure(nnx.state(grads, self.wrt, graph=self.graph))
        opt_state = nnx.as_pure(self.opt_state)
        new_params, new_state = _step(
            self.tx, params, opt_state, grads, self.kernel, self.donate, nnx.as_pure(kwargs)
        )
        nnx.update(model, new_params)
        nnx.update(self.opt_state, nnx.state(new_state, graph=self.graph))
        self.step[...] += 1


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` whose ``apply_gradients`` runs :func:`accel_jax.apply_step`.

    Created and used as the parent (``TrainState.create(apply_fn=..., params=...,
    tx=...)``, ``state.apply_gradients(grads=grads)``, Flax's
    ``overwrite_with_gradient`` collection included); ``kernel`` (a static field,
    ``TrainState.create(..., kernel=True)``) is :func:`accel_jax.apply_step`'s. Results
    equal ``tx.update`` + ``apply_updates`` (bit-identical on the XLA path; ``rtol``
    1e-6 with the native kernel). For an in-place step, donate the state to your
    jitted train step (``jax.jit(train_step, donate_argnums=0)``); called outside a
    trace, ``apply_gradients`` runs a cached jitted step without donation (the
    old state stays valid).

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> state = aj.flax.TrainState.create(
    ...     apply_fn=None, params={"w": jnp.ones(2)}, tx=aj.sgd(0.5))
    >>> state = state.apply_gradients(grads={"w": jnp.ones(2)})
    >>> state.params["w"].tolist(), int(state.step)
    ([0.5, 0.5], 1)
    """

    kernel: bool | None = struct.field(pytree_node=False, default=None)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """``self`` with ``step + 1`` and the new params and state (and ``kwargs`` replaced)."""
        if not any(self.kernel is k for k in (None, True, False)):
            raise ValueError(
                f"TrainState: kernel must be None, True or False, got {self.kernel!r}."
            )
        overwrite = train_state.OVERWRITE_WITH_GRADIENT in grads
        params = self.params["params"] if overwrite else self.params
        new_params, new_state = _step(
            self.tx,
            params,
            self.opt_state,
            grads["params"] if overwrite else grads,
            self.kernel,
            False,
            {},
        )
        if overwrite:
            key = train_state.OVERWRITE_WITH_GRADIENT
            new_params = {"params": new_params, key: grads[key]}
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=new_state, **kwargs
        )
