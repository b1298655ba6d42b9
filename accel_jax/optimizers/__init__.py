"""The named optimizers, each a chain of building blocks.

Every optimizer takes ``convention="optax" | "torch" | "keras"``: the defaults of
the framework named, for every argument left unset (``None``), so that one call
reproduces that framework's trajectory. Explicit arguments always win. The
learning rate is always explicit. ``docs/conformance.md`` lists the settings.
"""


from accel_jax.optimizers._conventions import CONVENTIONS
from accel_jax.optimizers.adagrad import adagrad
from accel_jax.optimizers.adam import adam, adamax, adamw, nadam
from accel_jax.optimizers.rmsprop import rmsprop
from accel_jax.optimizers.sgd import sgd

__all__ = ["CONVENTIONS", "adagrad", "adam", "adamax", "adamw", "nadam", "rmsprop", "sgd"]
