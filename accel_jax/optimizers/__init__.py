"""The named optimizers, each a chain of building blocks.

Every optimizer takes ``convention="optax" | "torch" | "keras"``: the defaults of
the framework named, for every argument left unset (``None``), so that one call
reproduces that framework's trajectory. Explicit arguments always win. The
learning rate is always explicit. ``docs/conformance.md`` lists the settings.
"""


from accel_jax.optimizers._conventions import CONVENTIONS
from accel_jax.optimizers.adadelta import adadelta
from accel_jax.optimizers.adafactor import adafactor
from accel_jax.optimizers.adagrad import adagrad
from accel_jax.optimizers.adam import adam, adamax, adamw, nadam, nadamw
from accel_jax.optimizers.lamb import lamb, lars
from accel_jax.optimizers.lion import lion
from accel_jax.optimizers.muon import muon
from accel_jax.optimizers.radam import radam
from accel_jax.optimizers.rmsprop import rmsprop
from accel_jax.optimizers.schedule_free import schedule_free_adamw, schedule_free_sgd
from accel_jax.optimizers.sgd import sgd

__all__ = ["CONVENTIONS", "adagrad", "adam", "adamax", "adamw", "nadam", "rmsprop", "sgd"]
__all__ += ["adadelta", "lion", "nadamw", "radam"]  # (radam / nadamw / adadelta / lion)
__all__ += ["schedule_free_adamw", "schedule_free_sgd"]  # (schedule-free)
__all__ += ["adafactor", "lamb", "lars"]  # (adafactor, lamb, lars)
__all__ += ["muon"]  # (muon)
