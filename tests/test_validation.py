"""Every number is checked wherever it enters: constructors, schedules, set_hyperparams, jit.

The whole-library rules (every public transformation) are in tests/test_registry.py;
these are the cases of issue 10, each of which was accepted before.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import accel_jax as aj

PARAMS = {"w": jnp.ones(2)}


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: aj.adam("1e-3"), "learning_rate must be a number.*str"),
        (lambda: aj.adam(True), "learning_rate must be a number.*bool"),
        (lambda: aj.adam(1e-3, b1=jnp.asarray(True)), "b1 must be a number"),
        (lambda: aj.sgd(0.1, momentum=0.9, nesterov="False"), "nesterov must be True or False"),
        (lambda: aj.adam(1e-3, amsgrad="yes"), "amsgrad must be True or False"),
        (lambda: aj.adam(1e-3, eps_before_bias_correction=1), "eps_before_bias_correction"),
        (lambda: aj.accumulate_gradients(aj.sgd(0.1), float("nan")), "every_k must be finite"),
        (lambda: aj.reduce_on_plateau(patience=float("nan")), "patience must be finite"),
        (lambda: aj.skip_non_finite("adam"), "inner must be a GradientTransformation"),
        (lambda: aj.accumulate_gradients(optax.adam, 2), "inner must be a GradientTransformation"),
        (lambda: aj.masked(None, {"w": True}), "inner must be a GradientTransformation"),
    ],
)
def test_types_are_checked_and_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: aj.adam(1e-3, b1=1 - 1e-9), r"b1 must be in \[0, 1\).*1.0 in float32"),
        (lambda: aj.rmsprop(0.1, decay=1 - 1e-9), r"decay must be in \[0, 1\).*float32"),
        (lambda: aj.adam(1e39), "learning_rate=1e\\+39 is not representable in float32"),
        (lambda: aj.adamw(1e-3, weight_decay=1e39), "weight_decay=1e\\+39 is not representable"),
        (lambda: aj.accumulate_gradients(aj.sgd(0.1), 2**40), "every_k must fit in int32"),
    ],
)
def test_values_are_checked_in_the_dtype_they_are_used_in(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_float64_value_is_fine_under_x64(x64):
    aj.adam(1e-3, b1=1 - 1e-9)  # representable in float64, which x64 computes in


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: aj.cosine_decay(-0.01, 10), "init_value"),
        (lambda: aj.linear_schedule(0.1, -0.1, 10), "end_value"),
        (lambda: aj.warmup(aj.constant_schedule(0.1), 5, init_value=-1), "init_value"),
        (lambda: aj.exponential_decay(-1.0, 10, 0.5), "init_value"),
        (lambda: aj.piecewise_constant([2], [0.1, -0.1]), r"values\[1\]"),
        (lambda: aj.constant_schedule(float("inf")), "value"),
        (lambda: aj.cosine_decay(0.1, 10, alpha=-1.0), "alpha"),
    ],
)
def test_library_schedules_refuse_negative_and_infinite_values(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_a_user_schedule_is_checked_at_step_0():
    with pytest.raises(ValueError, match=r"learning_rate \(its schedule at step 0\)"):
        aj.adam(lambda step: -1e-3 * jnp.ones([]))
    with pytest.raises(ValueError, match=r"b1 \(its schedule at step 0\) must be in \[0, 1\)"):
        aj.adam(1e-3, b1=lambda step: jnp.ones([]))
    with pytest.raises(ValueError, match="must return a scalar"):
        aj.sgd(lambda step: jnp.ones(2))
    aj.adam(lambda step: 1e-3 * jnp.ones([]))  # a good one passes


def test_concrete_arrays_are_checked_and_tracers_pass():
    with pytest.raises(ValueError, match="learning_rate"):
        aj.adam(jnp.asarray(-1.0))
    aj.adam(jnp.asarray(1e-3))

    @jax.jit
    def build_and_step(lr):
        tx = aj.adam(lr)  # traced: cannot be inspected, passes
        return tx.update(PARAMS, tx.init(PARAMS), PARAMS)[0]

    build_and_step(1e-3)


def test_optax_inject_hyperparams_still_calls_our_builders(standard_promotion):
    tx = optax.inject_hyperparams(aj.adam)(learning_rate=1e-2, b1=0.9)
    state = tx.init(PARAMS)
    updates, state = jax.jit(tx.update)(PARAMS, state, PARAMS)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-2)


@pytest.mark.parametrize(
    "value, match",
    [
        (-0.1, r"learning_rate must be in \[0, inf\]"),
        (float("nan"), "learning_rate must be finite"),
        (1e39, "not representable in float32"),
        ("0.1", "must be a number"),
        (True, "must be a number"),
        (lambda step: 0.1, "a callable"),
    ],
)
def test_set_hyperparams_validates_as_the_constructor_does(value, match):
    state = aj.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match=match):
        aj.set_hyperparams(state, learning_rate=value)


def test_set_hyperparams_refuses_a_beta_that_is_one_in_its_dtype():
    state = aj.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\).*float32"):
        aj.set_hyperparams(state, b2=1 - 1e-9)
    with pytest.raises(ValueError, match=r"scale must be in \[0, inf\]"):
        aj.set_hyperparams(aj.reduce_on_plateau().init(PARAMS), scale=-1.0)


def test_checkify_hyperparams_catches_bad_values_inside_jit():
    tx = aj.sgd(0.1)
    step = jax.jit(aj.checkify_hyperparams(aj.make_step(tx, jit=False, donate=False)))

    @jax.jit
    def poison(state, lr):  # a traced value cannot be checked by set_hyperparams
        return aj.set_hyperparams(state, learning_rate=lr)

    state = poison(tx.init(PARAMS), -0.5)
    err, _ = step(PARAMS, state, PARAMS)
    with pytest.raises(Exception, match=r"learning_rate must be a number in \[0, inf\]"):
        err.throw()
    err, _ = step(PARAMS, tx.init(PARAMS), PARAMS)
    err.throw()  # a good value raises nothing


def test_restoring_another_optimizers_state_names_the_path():
    other = aj.sgd(0.1, momentum=0.9).init(PARAMS)
    with pytest.raises(ValueError, match=r"at path \[0\] it expects ScaleByAdamState.*TraceState"):
        aj.adam(1e-3).update(PARAMS, other, PARAMS)
    wrapped = aj.accumulate_gradients(aj.adam(1e-3), 2)
    with pytest.raises(ValueError, match="expects AccumulateGradientsState"):
        wrapped.update(PARAMS, aj.adam(1e-3).init(PARAMS), PARAMS)
    with pytest.raises(ValueError, match="expects SkipNonFiniteState"):
        aj.skip_non_finite(aj.adam(1e-3)).update(PARAMS, other, PARAMS)


def test_python_float_params_and_gradients_are_0d_arrays():
    tx = aj.sgd(0.1, momentum=0.9)
    got, state = tx.update(0.5, tx.init(1.0), 1.0)
    want, _ = tx.update(jnp.asarray(0.5), tx.init(jnp.asarray(1.0)), jnp.asarray(1.0))
    assert float(got) == float(want) == pytest.approx(-0.05)  # scaled, not passed through
    assert float(aj.apply_updates(1.0, got)) == pytest.approx(0.95)
    tx = aj.skip_non_finite(aj.sgd(1.0))
    u, state = tx.update(float("nan"), tx.init(1.0), 1.0)
    assert int(state.total_non_finite) == 1  # a Python NaN is seen
