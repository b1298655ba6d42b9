"""Registers the ``optax_suite`` marker (deselect locally with ``-m "not optax_suite"``)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "optax_suite: runs optax's own test files against accel_jax (~1-2 min)"
    )
