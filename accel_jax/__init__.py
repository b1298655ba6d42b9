"""accel_jax: faster optimizers for JAX.

Pure ``(init, update)`` gradient transformations over pytrees (optax's protocol),
built by chaining composable building blocks. The public API is what this module
exports; submodules are implementation.
"""

from accel_jax.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Schedule,
    Updates,
    apply_updates,
    identity,
)
from accel_jax.combine import (
    MaskedNode,
    MaskedState,
    PartitionState,
    chain,
    freeze,
    masked,
    partition,
    path_labels,
)
from accel_jax.hyperparams import get_hyperparams, set_hyperparams
from accel_jax.optimizers import (
    CONVENTIONS,
    adagrad,
    adam,
    adamax,
    adamw,
    nadam,
    rmsprop,
    sgd,
)
from accel_jax.transforms.adaptive import (
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    ScaleByRmsState,
    ScaleByStddevState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_rms,
    scale_by_stddev,
)
from accel_jax.transforms.momentum import EmaState, TraceState, ema, trace
from accel_jax.transforms.regularization import AddDecayedWeightsState, add_decayed_weights
from accel_jax.transforms.scaling import (
    ScaleByLearningRateState,
    scale,
    scale_by_learning_rate,
)

# --- schedules (issue 3) ---
# --- performance scheduling, learning-rate range test (issue 3) ---
# --- regularization, sparsity, robustness (issue 4) ---
# --- performance (issue 6) ---

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
