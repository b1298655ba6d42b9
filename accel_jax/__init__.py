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
from accel_jax.transforms.adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
)
from accel_jax.transforms.adaptive import (
    ScaleByAdagradState,
    ScaleByRmsState,
    ScaleByStddevState,
    scale_by_adagrad,
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
from accel_jax.schedules import (
    constant_schedule,
    cosine_decay,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant,
    polynomial_schedule,
    power_decay,
    step_decay,
    warmup,
)
from accel_jax.schedules_cyclic import cosine_restarts, one_cycle, one_cycle_momentum
# --- performance scheduling, learning-rate range test (issue 3) ---
from accel_jax.lr_finder import SUGGESTION_RULES, LRFinderResult, find_learning_rate
from accel_jax.transforms.plateau import (
    PlateauRepeatWarning,
    ReduceOnPlateauState,
    apply_gradients,
    reduce_on_plateau,
)
# --- regularization, sparsity, robustness (issue 4) ---
from accel_jax.transforms.accumulation import AccumulateGradientsState, accumulate_gradients
from accel_jax.transforms.averaging import AverageParamsState, average_params, averaged_params
from accel_jax.transforms.clipping import (
    adaptive_grad_clip,
    clip,
    clip_by_global_norm,
    global_norm,
    unit_norms,
)
from accel_jax.transforms.guards import SkipNonFiniteState, skip_non_finite
from accel_jax.transforms.regularization import (
    L1ProximalState,
    PruneByMagnitudeState,
    l1_proximal,
    max_norm,
    polynomial_sparsity,
    prune_by_magnitude,
)

# --- performance (issue 6) ---
from accel_jax.fused import FlatLayout, apply_step, flatten_params, make_step
from accel_jax.packing import pack_state
from accel_jax._native import native_available, native_status
from accel_jax.transforms.quantized import (
    QuantizedArray,
    ScaleByAdam8bitState,
    scale_by_adam_8bit,
    state_bytes,
)

# --- frontier optimizers (issue 12): one block per family, in this order ---
# (radam / nadamw / adadelta / lion)
from accel_jax.optimizers import adadelta, lion, nadamw, radam
from accel_jax.transforms.adadelta import ScaleByAdadeltaState, scale_by_adadelta
from accel_jax.transforms.rectified import scale_by_radam
from accel_jax.transforms.sign import ScaleByLionState, scale_by_lion
# (muon)
from accel_jax.optimizers import muon
from accel_jax.transforms.orthogonal import (
    NS_COEFFS_PRESETS,
    MuonDimensionNumbers,
    ScaleByMuonState,
    orthogonalize,
    scale_by_muon,
)
from accel_jax.transforms.shape_scaling import ScaleByShapeState, scale_by_shape
# (adafactor, lamb, lars, scale_by_trust_ratio)
from accel_jax.optimizers import adafactor, lamb, lars
from accel_jax.transforms.factored import (
    FactoredState,
    ScaleByRelativeStepState,
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
    scale_by_relative_step,
)
from accel_jax.transforms.trust_ratio import ScaleByTrustRatioState, scale_by_trust_ratio
# (schedule-free)
from accel_jax.optimizers import schedule_free_adamw, schedule_free_sgd
from accel_jax.transforms.schedule_free import (
    ScaleByRmsDebiasedState,
    ScheduleFreeAveraging,
    ScheduleFreeState,
    scale_by_rms_debiased,
    schedule_free,
    schedule_free_eval_params,
)

# --- optax drop-in (issue 11) ---
from accel_jax.base import incremental_update, periodic_update
from accel_jax.combine import named_chain, selective_transform
from accel_jax.optimizers.adam import adamaxw
from accel_jax.schedules_optax import (
    cosine_decay_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)
from accel_jax.transforms.conditional import (
    ApplyEvery,
    ApplyIfFiniteState,
    ConditionallyMaskState,
    ConditionallyTransformState,
    apply_every,
    apply_if_finite,
    conditionally_mask,
    conditionally_transform,
)
from accel_jax.transforms.constraints import (
    NonNegativeParamsState,
    ZeroNansState,
    keep_params_nonnegative,
    zero_nans,
)
from accel_jax.transforms.layout import flatten
from accel_jax.transforms.lookahead import LookaheadState, lookahead
from accel_jax.transforms.noise import AddNoiseState, add_noise
from accel_jax.transforms.scaling import ScaleByScheduleState, centralize, scale_by_schedule
from accel_jax.transforms.spike import SkipGradientSpikesState, skip_gradient_spikes
from accel_jax.multi_steps import (
    MultiSteps,
    MultiStepsState,
    skip_large_updates,
    skip_not_finite,
)
from accel_jax.transforms.plateau_optax import ReduceLROnPlateauState

# --- trust (issue 10) ---
from accel_jax.hyperparams import checkify_hyperparams, with_hyperparams_of

# --- scale out (issue 14) ---
from accel_jax.sharding import (
    offload_state,
    sharded_init,
    state_shardings,
    with_sharded_init,
)

__version__ = "0.1.0"

import types as _types

__all__ = sorted(
    name
    for name, value in globals().items()
    if not name.startswith("_") and not isinstance(value, _types.ModuleType)
)


def __getattr__(name: str):
    # ``aj.flax`` (Flax drop-ins, accel_jax/integrations/flax.py) imports Flax on first use.
    if name == "flax":
        import importlib

        return importlib.import_module("accel_jax.integrations.flax")
    raise AttributeError(f"module 'accel_jax' has no attribute {name!r}")
