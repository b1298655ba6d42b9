"""Test configuration: 8 simulated CPU devices and strict dtype promotion.

XLA_FLAGS must be set before JAX is imported anywhere, so it is set here at the
top of the first module pytest imports.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

# Our code must not rely on implicit promotion (bf16 params with f32 state, say).
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def standard_promotion():
    """For calling third-party code (optax, flax) that relies on implicit promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture
def native_kernels():
    """For tests of the native CPU kernels: skips without a C++ compiler (or with
    ``ACCEL_JAX_NATIVE=0``), fails when there is one and they did not build."""
    import accel_jax as aj
    from accel_jax import _native

    if not aj.native_available():
        if _native._compiler() is None or os.environ.get("ACCEL_JAX_NATIVE") == "0":
            pytest.skip(f"the native kernels are not available: {aj.native_status()}")
        pytest.fail(f"a C++ compiler is installed but the kernels did not build: "
                    f"{aj.native_status()}")


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (JAX's default dtype becomes float64)."""
    if hasattr(jax, "enable_x64"):
        context = jax.enable_x64(True)
    else:  # older JAX
        from jax.experimental import enable_x64

        context = enable_x64()
    with context:
        yield
