"""Adam and its family: AdamW, AMSGrad, AdaMax, AdaMaxW, Nadam, NAdamW."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain
from accel_jax.optimizers._conventions import UNSET, settings
from accel_jax.optimizers._kernels import with_adam_kernel
from accel_jax.transforms.adam import (
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
)
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate


def _adam_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits=32):
    if state_bits not in (None, 32):
        from accel_jax.transforms.quantized import adam_8bit_scaling

        return adam_8bit_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits)
    common = dict(
        eps_before_bias_correction=s["eps_before_bias_correction"],
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    if amsgrad:
        return scale_by_amsgrad(
            b1, b2, s["eps"], eps_root,
            max_of_bias_corrected=s["amsgrad_max_of_corrected"], **common,
        )
    return scale_by_adam(b1, b2, s["eps"], eps_root, **common)


def _descent(learning_rate, make_scaling, weight_decay=UNSET, mask=None):
    """``chain(scaling, [add_decayed_weights(weight_decay, mask)], scale_by_learning_rate)``.

    Every builder of the family: the learning rate is checked, then the scaling is
    built by ``make_scaling()``, then the decoupled decay (when ``weight_decay`` is given).
    """
    v.check_rate("learning_rate", learning_rate)
    steps = [make_scaling()]
    if weight_decay is not UNSET:
        steps.append(add_decayed_weights(weight_decay, mask))
    return chain(*steps, scale_by_learning_rate(learning_rate))


def _adam_or_adamw(name, convention, learning_rate, b1, b2, eps_root, amsgrad, mu_dtype,
                   nu_dtype, state_bits, mask=None, **given):
    """:func:`adam` (no ``weight_decay`` given) or :func:`adamw`, with its native kernel."""
    v.check_flags(amsgrad=amsgrad)
    s = settings(name, convention, **given)
    state_bits = 32 if state_bits is None else state_bits  # None: not an injectable number
    decays = "weight_decay" in s
    tx = _descent(
        learning_rate,
        lambda: _adam_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits),
        s["weight_decay"] if decays else UNSET,
        mask,
    )
    return with_adam_kernel(tx, s, eps_root, amsgrad, state_bits, decays=decays, mask=mask)


_ADAM_TABLE = """
    ================================  =====  =====  =====
    argument                          optax  torch  keras
    ================================  =====  =====  =====
    ``eps``                           1e-8   1e-8   1e-7
    ``eps_before_bias_correction``    False  False  True
    ``amsgrad_max_of_corrected``      True   False  False
    ================================  =====  =====  =====
"""


def adam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    amsgrad: bool = False,
    eps_before_bias_correction: bool | None = None,
    amsgrad_max_of_corrected: bool | None = None,
    nu_dtype: Any = None,
    state_bits: int | None = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Adam (and AMSGrad with ``amsgrad=True``)::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t,     v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        w <- w - eta_t * m_hat / (sqrt(v_hat + eps_root) + eps),
        m_hat = m_t / (1 - b1^t),  v_hat = v_t / (1 - b2^t)

    ``eps_before_bias_correction=True`` is Keras' "epsilon hat": the denominator
    is ``sqrt(v_hat) + eps / sqrt(1 - b2^t)``. AMSGrad replaces ``v_hat`` by its
    running maximum, taken over ``v_hat`` (``amsgrad_max_of_corrected=True``) or
    over ``v_t`` before the correction (torch, Keras). ``mu_dtype`` and
    ``nu_dtype`` set each moment's dtype (e.g. ``jnp.bfloat16`` for both).
    ``state_bits=8`` stores both moments 8-bit block-wise quantized
    (:func:`accel_jax.scale_by_adam_8bit`, about 0.25x the float32 state).
    On CPU, :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` run Adam and
    AdamW (not AMSGrad or 8-bit) as one native pass over memory
    (``docs/performance.md``).
    Defaults per ``convention``:
    {table}
    >>> import jax, jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adam(1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = aj.apply_updates(params, updates)
    >>> round(float(params["w"][0]), 6)
    0.999

    References: Kingma & Ba, ICLR 2015; Reddi, Kale & Kumar, ICLR 2018.
    """
    return _adam_or_adamw(
        "adam", convention, learning_rate, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype,
        state_bits, eps=eps, eps_before_bias_correction=eps_before_bias_correction,
        amsgrad_max_of_corrected=amsgrad_max_of_corrected,
    )


adam.__doc__ = adam.__doc__.replace("{table}", _ADAM_TABLE)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    amsgrad: bool = False,
    eps_before_bias_correction: bool | None = None,
    amsgrad_max_of_corrected: bool | None = None,
    nu_dtype: Any = None,
    state_bits: int | None = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay ``lambda``::

        w <- w - eta_t * (m_hat / (sqrt(v_hat + eps_root) + eps) + lambda * w)

    The decay is scaled by the learning rate, as in optax, torch.optim and Keras.
    ``mask`` (pytree of bools or function of the params) selects the leaves that
    decay (e.g. kernels but not biases or norms). Other arguments as :func:`adam`.
    Defaults per ``convention``: ``weight_decay`` 1e-4 (optax), 1e-2 (torch),
    4e-3 (keras), and:
    {table}
    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return _adam_or_adamw(
        "adamw", convention, learning_rate, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype,
        state_bits, mask, eps=eps, eps_before_bias_correction=eps_before_bias_correction,
        amsgrad_max_of_corrected=amsgrad_max_of_corrected, weight_decay=weight_decay,
    )


adamw.__doc__ = adamw.__doc__.replace("{table}", _ADAM_TABLE)


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    *,
    eps_in_max: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """AdaMax: Adam with the infinity norm in place of the second moment::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t,   v_t = max(b2 * v_{t-1}, |g_t| + eps)
        w <- w - eta_t * m_t / ((1 - b1^t) * v_t)

    ``eps_in_max=False`` (Keras) uses ``max(b2 * v_{t-1}, |g_t|)`` and divides by
    ``v_t + eps``. Defaults per ``convention``: ``eps`` 1e-8 / 1e-8 / 1e-7 and
    ``eps_in_max`` True / True / False for optax / torch / keras.

    Reference: Kingma & Ba, ICLR 2015, section 7.1.
    """
    s = settings("adamax", convention, eps=eps, eps_in_max=eps_in_max)
    return _descent(learning_rate, _adamax_scaling(s, b1, b2, mu_dtype, nu_dtype))


def _adamax_scaling(s, b1, b2, mu_dtype, nu_dtype):
    """The ``make_scaling`` of :func:`adamax` and :func:`adamaxw`."""
    return lambda: scale_by_adamax(
        b1, b2, s["eps"], eps_in_max=s["eps_in_max"], mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )



def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    eps_in_max: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """AdaMax with decoupled weight decay (as AdamW is to Adam)::

        w <- w - eta_t * (m_t / ((1 - b1^t) * v_t) + lambda * w)

    ``mask`` selects the leaves that decay; other arguments as :func:`adamax`.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.adamaxw(0.1, weight_decay=0.5)
    >>> p = jnp.ones(1)
    >>> round(float(tx.update(jnp.ones(1), tx.init(p), p)[0][0]), 4)  # -0.1 * (1 + 0.5)
    -0.15

    Reference: Loshchilov & Hutter, ICLR 2019 (decoupling); Kingma & Ba, ICLR 2015.
    """
    s = settings("adamax", convention, eps=eps, eps_in_max=eps_in_max)
    return _descent(
        learning_rate, _adamax_scaling(s, b1, b2, mu_dtype, nu_dtype), weight_decay, mask
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: Any = UNSET,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Nadam: Adam with Nesterov momentum and an optional momentum schedule::

        mu_t = b1 * (1 - 0.5 * 0.96^(t * psi))       (mu_t = b1 when psi is None)
        m_hat = mu_{t+1} m_t / (1 - prod_{i<=t+1} mu_i) + (1 - mu_t) g_t / (1 - prod_{i<=t} mu_i)
        w <- w - eta_t * m_hat / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    ``momentum_decay`` is ``psi``. Defaults per ``convention``: ``momentum_decay``
    None (optax), 0.004 (torch), 1.0 (keras); ``eps`` 1e-8 / 1e-8 / 1e-7.

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """
    s = settings("nadam", convention, eps=eps, momentum_decay=momentum_decay)
    return _descent(learning_rate, _nadam_scaling(s, b1, b2, eps_root, mu_dtype, nu_dtype))


def _nadam_scaling(s, b1, b2, eps_root, mu_dtype, nu_dtype):
    """The ``make_scaling`` of :func:`nadam` and :func:`nadamw`."""
    return lambda: scale_by_nadam(
        b1, b2, s["eps"], eps_root, momentum_decay=s["momentum_decay"],
        mu_dtype=mu_dtype, nu_dtype=nu_dtype,
    )


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    momentum_decay: Any = UNSET,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """NAdamW: Nadam with decoupled weight decay ``lambda``::

        w <- w - eta_t * (m_hat / (sqrt(v_hat + eps_root) + eps) + lambda * w)

    with Nadam's ``m_hat`` (:func:`nadam`), on the leaves ``mask`` selects. Positional
    arguments in ``optax.nadamw``'s order (``mu_dtype`` before ``weight_decay``).
    Works on flat params (:func:`accel_jax.flatten_params`): per element.
    ``optax.nadamw``; ``torch.optim.NAdam(decoupled_weight_decay=True)``; Keras'
    ``Nadam(weight_decay=...)`` (its base optimizer decays decoupled). Defaults per
    ``convention``: ``weight_decay`` 1e-4 (optax), 0 (torch, keras: pass it);
    ``momentum_decay`` None / 0.004 / 1.0; ``eps`` 1e-8 / 1e-8 / 1e-7.

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.nadamw(0.1, weight_decay=0.5)
    >>> params = {"w": jnp.array([2.0])}
    >>> u, state = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 6)  # zero gradient: only the decay, -eta * lambda * w
    -0.1

    Reference: Loshchilov & Hutter, ICLR 2019; Dozat, ICLR workshop 2016.
    """
    s = settings(
        "nadamw", convention, eps=eps, momentum_decay=momentum_decay, weight_decay=weight_decay
    )
    return _descent(
        learning_rate, _nadam_scaling(s, b1, b2, eps_root, mu_dtype, nu_dtype),
        s["weight_decay"], mask,
    )
