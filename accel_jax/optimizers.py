"""The named optimizers, each a chain of building blocks.

Every optimizer takes ``convention="optax" | "torch" | "keras"``: the defaults of
the framework named, for every argument left unset (``None``), so that one call
reproduces that framework's trajectory. Explicit arguments always win. The
learning rate is always explicit. ``docs/conformance.md`` lists the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from accel_jax import _validation as v
from accel_jax.base import GradientTransformationExtraArgs, ScalarOrSchedule
from accel_jax.combine import chain, mask_flags
from accel_jax.fused import KernelSpec, register_kernel_step
from accel_jax.hyperparams import float_dtype
from accel_jax.transforms.adaptive import (
    adam_eps,
    bias_correction,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_rms,
    scale_by_stddev,
)
from accel_jax.transforms.momentum import trace
from accel_jax.transforms.regularization import add_decayed_weights
from accel_jax.transforms.scaling import scale_by_learning_rate

#: The frameworks whose defaults and conventions the optimizers' ``convention=`` reproduces.
CONVENTIONS = ("optax", "torch", "keras")

# Per optimizer, per framework: the defaults of the knobs that differ between them.
_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sgd": {
        "optax": {"lr_in_momentum": False, "decoupled_weight_decay": False},
        "torch": {"lr_in_momentum": False, "decoupled_weight_decay": False},
        "keras": {"lr_in_momentum": True, "decoupled_weight_decay": True},
    },
    "adagrad": {
        "optax": {"initial_accumulator_value": 0.1, "eps": 1e-7, "eps_in_sqrt": True},
        "torch": {"initial_accumulator_value": 0.0, "eps": 1e-10, "eps_in_sqrt": False},
        "keras": {"initial_accumulator_value": 0.1, "eps": 1e-7, "eps_in_sqrt": True},
    },
    "rmsprop": {
        "optax": {"decay": 0.9, "eps": 1e-8, "eps_in_sqrt": True, "lr_in_momentum": True},
        "torch": {"decay": 0.99, "eps": 1e-8, "eps_in_sqrt": False, "lr_in_momentum": False},
        "keras": {"decay": 0.9, "eps": 1e-7, "eps_in_sqrt": True, "lr_in_momentum": True},
    },
    "adam": {
        "optax": {
            "eps": 1e-8, "eps_before_bias_correction": False, "amsgrad_max_of_corrected": True
        },
        "torch": {
            "eps": 1e-8, "eps_before_bias_correction": False, "amsgrad_max_of_corrected": False
        },
        "keras": {
            "eps": 1e-7, "eps_before_bias_correction": True, "amsgrad_max_of_corrected": False
        },
    },
    "adamax": {
        "optax": {"eps": 1e-8, "eps_in_max": True},
        "torch": {"eps": 1e-8, "eps_in_max": True},
        "keras": {"eps": 1e-7, "eps_in_max": False},
    },
    "nadam": {
        "optax": {"eps": 1e-8, "momentum_decay": None},
        "torch": {"eps": 1e-8, "momentum_decay": 0.004},
        "keras": {"eps": 1e-7, "momentum_decay": 1.0},
    },
}
_DEFAULTS["adamw"] = {
    name: {**d, "weight_decay": wd}
    for (name, d), wd in zip(_DEFAULTS["adam"].items(), (1e-4, 1e-2, 4e-3), strict=True)
}

_UNSET = "unset"  # marks "not given" where None is a meaningful value
_NONE_IS_A_VALUE = {"momentum_decay"}  # nadam: None means a constant momentum (optax)


def _settings(optimizer: str, convention: str, **given: Any) -> dict[str, Any]:
    """The given arguments, with the framework's defaults for those left unset."""
    v.check_choice("convention", convention, CONVENTIONS)
    defaults = _DEFAULTS[optimizer][convention]
    def unset(k, val):
        return val is _UNSET or (val is None and k not in _NONE_IS_A_VALUE)

    return {k: (defaults[k] if unset(k, val) else val) for k, val in given.items()}


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    decoupled_weight_decay: bool | None = None,
    lr_in_momentum: bool | None = None,
    mu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, with optional momentum, Nesterov momentum and weight decay.

    With learning rate ``eta_t``, momentum ``beta`` and weight decay ``lambda``::

        g_t <- g_t + lambda * w                        (coupled L2, torch.optim's weight_decay)
        v_t = beta * v_{t-1} + g_t;   w <- w - eta_t * v_t               (heavy ball)
        w <- w - eta_t * (g_t + beta * v_t)                              (nesterov=True)

    ``lr_in_momentum=True`` puts the learning rate inside the velocity (Keras):
    ``v_t = beta * v_{t-1} - eta_t * g_t;  w <- w + v_t``; the two agree for a
    constant rate and differ when it changes. ``decoupled_weight_decay=True``
    subtracts ``eta_t * lambda * w`` outside the momentum (Keras' ``weight_decay``).
    ``momentum=None`` (or 0) is plain gradient descent. On CPU,
    :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` run SGD with momentum
    and no weight decay as one native pass over memory (``docs/performance.md``).
    Defaults per ``convention``:

    ============================  =====  =====  =====
    argument                      optax  torch  keras
    ============================  =====  =====  =====
    ``lr_in_momentum``            False  False  True
    ``decoupled_weight_decay``    False  False  True
    ============================  =====  =====  =====

    >>> import jax.numpy as jnp, accel_jax as aj
    >>> tx = aj.sgd(0.1, momentum=0.9)
    >>> params = {"w": jnp.array([1.0])}
    >>> u, state = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(u["w"][0]), 6)
    -0.2

    References: Polyak 1964; Sutskever et al., ICML 2013.
    """
    s = _settings(
        "sgd",
        convention,
        lr_in_momentum=lr_in_momentum,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    v.check_rate("learning_rate", learning_rate)
    v.check_number("weight_decay", weight_decay, lo=0.0, allow_schedule=True)
    use_momentum = momentum is not None and (callable(momentum) or momentum != 0)
    if nesterov and not use_momentum:
        raise ValueError("nesterov=True needs a momentum in (0, 1), got momentum=None.")
    steps: list = []
    coupled = not s["decoupled_weight_decay"]
    use_decay = callable(weight_decay) or weight_decay != 0
    if use_decay and coupled:
        steps.append(add_decayed_weights(weight_decay))
    velocity = [trace(momentum, nesterov=nesterov, mu_dtype=mu_dtype)] if use_momentum else []
    lr = [scale_by_learning_rate(learning_rate)]
    steps += lr + velocity if s["lr_in_momentum"] else velocity + lr
    if use_decay and not coupled:
        steps.append(add_decayed_weights(weight_decay, learning_rate=learning_rate))
    tx = chain(*steps)
    if use_momentum and not use_decay:
        tx = _with_momentum_kernel(tx, nesterov, s["lr_in_momentum"])
    return tx


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float | None = None,
    eps: float | None = None,
    *,
    eps_in_sqrt: bool | None = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """AdaGrad: per-coordinate steps shrinking with the sum of squared gradients::

        s_t = s_{t-1} + g_t^2,   w <- w - eta_t * g_t / sqrt(s_t + eps)
                                 (w <- w - eta_t * g_t / (sqrt(s_t) + eps) if not eps_in_sqrt)

    Defaults per ``convention``:

    =============================  =====  ======  =====
    argument                       optax  torch   keras
    =============================  =====  ======  =====
    ``initial_accumulator_value``  0.1    0.0     0.1
    ``eps``                        1e-7   1e-10   1e-7
    ``eps_in_sqrt``                True   False   True
    =============================  =====  ======  =====

    torch's ``lr_decay`` is the schedule ``eta / (1 + t * lr_decay)``
    (:func:`accel_jax.power_decay` style), passed as ``learning_rate``.

    Reference: Duchi, Hazan & Singer, JMLR 12 (2011).
    """
    s = _settings(
        "adagrad",
        convention,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
    )
    v.check_rate("learning_rate", learning_rate)
    return chain(
        scale_by_adagrad(
            s["initial_accumulator_value"], s["eps"], eps_in_sqrt=s["eps_in_sqrt"],
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float | None = None,
    eps: float | None = None,
    *,
    centered: bool = False,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool | None = None,
    lr_in_momentum: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    convention: str = "optax",
) -> GradientTransformationExtraArgs:
    """RMSProp, plain or centered, with optional (Nesterov) momentum::

        v_t = decay * v_{t-1} + (1 - decay) * g_t^2
        d_t = g_t / sqrt(v_t + eps)          (centered: g_t / sqrt(v_t - m_t^2 + eps),
                                              m_t the average gradient)
        w <- w - eta_t * d_t                 (no momentum)
        b_t = beta * b_{t-1} + eta_t * d_t;  w <- w - b_t     (momentum, lr_in_momentum=True)
        b_t = beta * b_{t-1} + d_t;  w <- w - eta_t * b_t     (momentum, lr_in_momentum=False)

    ``eps_in_sqrt=False`` uses ``sqrt(v_t) + eps``. On CPU,
    :func:`accel_jax.make_step` / :func:`accel_jax.apply_step` run plain RMSProp (not
    centered, no momentum) as one native pass over memory (``docs/performance.md``).
    Defaults per ``convention``:

    ===================  =====  =====  =====
    argument             optax  torch  keras
    ===================  =====  =====  =====
    ``decay``            0.9    0.99   0.9
    ``eps``              1e-8   1e-8   1e-7
    ``eps_in_sqrt``      True   False  True
    ``lr_in_momentum``   True   False  True
    ===================  =====  =====  =====

    Reference: Hinton, Coursera "Neural Networks for Machine Learning", lecture 6e.
    """
    s = _settings(
        "rmsprop",
        convention,
        decay=decay,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        lr_in_momentum=lr_in_momentum,
    )
    v.check_rate("learning_rate", learning_rate)
    use_momentum = momentum is not None and (callable(momentum) or momentum != 0)
    if nesterov and not use_momentum:
        raise ValueError("nesterov=True needs a momentum in (0, 1), got momentum=None.")
    kwargs = dict(eps_in_sqrt=s["eps_in_sqrt"], initial_scale=initial_scale, nu_dtype=nu_dtype)
    if centered:
        scaling = scale_by_stddev(s["decay"], s["eps"], mu_dtype=mu_dtype, **kwargs)
    else:
        scaling = scale_by_rms(s["decay"], s["eps"], **kwargs)
    velocity = [trace(momentum, nesterov=nesterov, mu_dtype=mu_dtype)] if use_momentum else []
    lr = [scale_by_learning_rate(learning_rate)]
    tx = chain(scaling, *(lr + velocity if s["lr_in_momentum"] else velocity + lr))
    if not centered and not use_momentum:
        tx = _with_rms_kernel(tx, s["decay"], s["eps"], s["eps_in_sqrt"])
    return tx


def _adam_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits=32):
    if state_bits != 32:
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


# ----------------------------------------------------------------- native kernels
# Each spec maps a chain built above onto its kernel in kernels/cpu_kernels.cc
# (used by apply_step / make_step; see accel_jax.fused). Scalars are read from
# the state the chain's own update returned, cast as its per-leaf code casts them.

_F32 = jnp.float32


def _lr(lr_state) -> jax.Array:
    return lr_state.hyperparams["learning_rate"].astype(_F32)


def _with_adam_kernel(tx, s, eps_root, amsgrad, state_bits, *, decays=False, mask=None):
    """Registers the native step of chain(scale_by_adam, [add_decayed_weights], lr)."""
    if amsgrad or state_bits != 32:
        return tx

    def scalars(state):
        adam = state[0]
        b1, b2 = adam.hyperparams["b1"], adam.hyperparams["b2"]
        bc1, bc2 = bias_correction(b1, adam.count), bias_correction(b2, adam.count)
        eps = adam_eps(s["eps"], bc2, s["eps_before_bias_correction"])
        b1, b2 = b1.astype(_F32), b2.astype(_F32)
        values = [b1, 1 - b1, b2, 1 - b2, bc1.astype(_F32), bc2.astype(_F32)]
        return jnp.stack([*values, jnp.asarray(eps_root, _F32), eps.astype(_F32), -_lr(state[-1])])

    def weight_decays(params, state):
        decay = getattr(state[1], "inner_state", state[1]).hyperparams["weight_decay"]
        flags = mask_flags(True if mask is None else mask, params)
        zero = jnp.zeros([], _F32)
        return [decay.astype(_F32) if flag else zero for flag in flags]

    spec = KernelSpec(
        "accel_jax_adam_f32",
        slots=lambda state: [state[0].mu, state[0].nu],
        with_slots=lambda state, t: (state[0]._replace(mu=t[0], nu=t[1]), *state[1:]),
        scalars=scalars,
        leaf_scalars=weight_decays if decays else None,
    )
    return register_kernel_step(tx, spec)


def _with_momentum_kernel(tx, nesterov, lr_first):
    """Registers the native step of chain(trace, lr) or chain(lr, trace) (Keras' order)."""
    velocity = 1 if lr_first else 0

    def scalars(state):
        beta = state[velocity].hyperparams["momentum"].astype(_F32)
        neg_lr = -_lr(state[1 - velocity])
        one = jnp.ones([], _F32)
        a, c = (neg_lr, one) if lr_first else (one, neg_lr)
        return jnp.stack([beta, a, c, jnp.asarray(float(nesterov), _F32)])

    def with_slots(state, trees):
        new = list(state)
        new[velocity] = state[velocity]._replace(trace=trees[0])
        return tuple(new)

    spec = KernelSpec(
        "accel_jax_momentum_f32",
        slots=lambda state: [state[velocity].trace],
        with_slots=with_slots,
        scalars=scalars,
    )
    return register_kernel_step(tx, spec)


def _with_rms_kernel(tx, decay, eps, eps_in_sqrt):
    """Registers the native step of chain(scale_by_rms, lr)."""

    def scalars(state):
        d = jnp.asarray(decay, float_dtype()).astype(_F32)
        e = jnp.asarray(eps, _F32)
        zero = jnp.zeros([], _F32)
        eps_root, eps_out = (e, zero) if eps_in_sqrt else (zero, e)
        return jnp.stack([d, 1 - d, eps_root, eps_out, -_lr(state[1])])

    spec = KernelSpec(
        "accel_jax_rms_f32",
        slots=lambda state: [state[0].nu],
        with_slots=lambda state, t: (state[0]._replace(nu=t[0]), *state[1:]),
        scalars=scalars,
    )
    return register_kernel_step(tx, spec)


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
    *,
    amsgrad: bool = False,
    eps_before_bias_correction: bool | None = None,
    amsgrad_max_of_corrected: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_bits: int = 32,
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
    s = _settings(
        "adam",
        convention,
        eps=eps,
        eps_before_bias_correction=eps_before_bias_correction,
        amsgrad_max_of_corrected=amsgrad_max_of_corrected,
    )
    v.check_rate("learning_rate", learning_rate)
    tx = chain(
        _adam_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits),
        scale_by_learning_rate(learning_rate),
    )
    return _with_adam_kernel(tx, s, eps_root, amsgrad, state_bits)


adam.__doc__ = adam.__doc__.replace("{table}", _ADAM_TABLE)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any | Callable[[Any], Any] | None = None,
    *,
    amsgrad: bool = False,
    eps_before_bias_correction: bool | None = None,
    amsgrad_max_of_corrected: bool | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_bits: int = 32,
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
    s = _settings(
        "adamw",
        convention,
        eps=eps,
        eps_before_bias_correction=eps_before_bias_correction,
        amsgrad_max_of_corrected=amsgrad_max_of_corrected,
        weight_decay=weight_decay,
    )
    v.check_rate("learning_rate", learning_rate)
    tx = chain(
        _adam_scaling(s, b1, b2, eps_root, amsgrad, mu_dtype, nu_dtype, state_bits),
        add_decayed_weights(s["weight_decay"], mask),
        scale_by_learning_rate(learning_rate),
    )
    return _with_adam_kernel(tx, s, eps_root, amsgrad, state_bits, decays=True, mask=mask)


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
    s = _settings("adamax", convention, eps=eps, eps_in_max=eps_in_max)
    v.check_rate("learning_rate", learning_rate)
    return chain(
        scale_by_adamax(
            b1, b2, s["eps"], eps_in_max=s["eps_in_max"], mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: float | None = None,
    eps_root: float = 0.0,
    *,
    momentum_decay: Any = _UNSET,
    mu_dtype: Any = None,
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
    s = _settings("nadam", convention, eps=eps, momentum_decay=momentum_decay)
    v.check_rate("learning_rate", learning_rate)
    return chain(
        scale_by_nadam(
            b1, b2, s["eps"], eps_root, momentum_decay=s["momentum_decay"],
            mu_dtype=mu_dtype, nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )
