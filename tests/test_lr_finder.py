"""The learning-rate range test: a quadratic with known stability limit, an MLP, the contract."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj
from accel_jax import lr_finder
from tests.problems import (
    MLP_PARAM_NAMES,
    as_params,
    mlp_loss,
    quadratic_loss,
    rotated_quadratic,
    small_mlp,
)


def quadratic():
    problem = rotated_quadratic()
    a, b = jnp.asarray(problem["A"], jnp.float32), jnp.asarray(problem["b"], jnp.float32)
    minimum = float(-0.5 * problem["b"] @ np.linalg.solve(problem["A"], problem["b"]))
    largest = float(np.linalg.eigvalsh(problem["A"]).max())
    traces = []

    def loss(params, batch):
        traces.append(1)  # runs once per trace of the jitted step
        return quadratic_loss(params, a, b) - minimum

    params = {"x": jnp.asarray(problem["x0"], jnp.float32)}
    return loss, params, largest, traces


@pytest.mark.parametrize("num_steps", [100, 300])
def test_quadratic_suggestion_is_below_and_near_the_stability_limit(num_steps):
    loss, params, largest, traces = quadratic()
    result = aj.find_learning_rate(loss, params, aj.sgd, [None], min_lr=1e-5, max_lr=1.0,
                                   num_steps=num_steps)
    limit = 2.0 / largest  # SGD on a quadratic is stable iff lr < 2 / L
    assert result.diverged and len(result.losses) < num_steps
    assert result.rule == "tenth_of_minimum"
    assert limit / 10 < result.suggested_lr < limit
    # The turning point lies past the limit: the loss only climbs once unstable.
    turning = result.learning_rates[np.argmin(result.smoothed_losses)]
    assert turning > limit
    assert result.suggestions["steepest"] < limit
    assert len(traces) == 1  # one compilation for the whole sweep


def test_records_the_schedule_and_stops_at_divergence():
    loss, params, _, _ = quadratic()
    result = aj.find_learning_rate(loss, params, lambda lr: aj.sgd(lr, momentum=0.9), [None],
                                   min_lr=1e-4, max_lr=1.0, num_steps=50, divergence_factor=3.0)
    n = len(result.losses)
    np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-4, 1.0, 50)[:n], rtol=1e-12)
    smoothed = result.smoothed_losses
    assert smoothed[-1] > 3.0 * smoothed[:-1].min() and np.all(smoothed[:-1] <= 3.0 *
                                                                  np.minimum.accumulate(smoothed[:-1]))
    # The bias-corrected moving average with smoothing 0.98.
    average = np.zeros(())
    for i, value in enumerate(result.losses):
        average = 0.98 * average + 0.02 * value
        np.testing.assert_allclose(smoothed[i], average / (1 - 0.98 ** (i + 1)), rtol=1e-6)


def test_each_step_uses_its_rate_in_every_group_of_the_factory():
    # Separable quadratic 0.5 * (x^2 + y^2): with SGD x_{i+1} = (1 - lr_i) x_i, and the
    # group "y" runs at a tenth of the rate: the factory's structure is respected.
    def loss(params, batch):
        return 0.5 * (jnp.sum(params["x"] ** 2) + jnp.sum(params["y"] ** 2))

    factory = lambda lr: aj.partition({"fast": aj.sgd(lr), "slow": aj.sgd(lr / 10)},
                                      {"x": "fast", "y": "slow"})
    result = aj.find_learning_rate(loss, {"x": jnp.ones(1), "y": jnp.ones(1)}, factory, [0],
                                   min_lr=1e-2, max_lr=1.0, num_steps=20)
    x = y = 1.0
    want = []
    for lr in result.learning_rates:
        want.append(0.5 * (x * x + y * y))
        x, y = (1 - lr) * x, (1 - lr / 10) * y
    np.testing.assert_allclose(result.losses, want, rtol=1e-5)


def test_optax_factories_work_too():
    loss, params, largest, _ = quadratic()
    for factory in (optax.sgd, lambda lr: optax.inject_hyperparams(optax.sgd)(learning_rate=lr)):
        result = aj.find_learning_rate(loss, params, factory, [None], min_lr=1e-5, max_lr=1.0,
                                       num_steps=100)
        assert 0.2 / largest < result.suggested_lr < 2.0 / largest


def test_nothing_passed_in_is_modified():
    loss, params, _, _ = quadratic()
    before = np.asarray(params["x"]).copy()
    batches = [None, None]
    aj.find_learning_rate(loss, params, aj.adam, batches, num_steps=20)
    assert not params["x"].is_deleted()
    np.testing.assert_array_equal(np.asarray(params["x"]), before)
    assert batches == [None, None]


def test_batches_cycle_when_reiterable_and_a_one_shot_iterator_ends_the_run():
    seen = []

    def loss(params, batch):
        return jnp.sum(params["w"] ** 2) * batch

    def tracked(values):
        for v in values:
            seen.append(v)
            yield jnp.float32(v)

    params = {"w": jnp.ones(2)}
    result = aj.find_learning_rate(loss, params, aj.sgd, tracked([1.0, 2.0, 3.0]), num_steps=10,
                                   min_lr=1e-6, max_lr=1e-5)
    assert len(result.losses) == 3 and seen == [1.0, 2.0, 3.0] and not result.diverged

    class Batches:  # re-iterable: each iter() starts again
        def __iter__(self):
            return iter([jnp.float32(1.0), jnp.float32(2.0)])

    result = aj.find_learning_rate(loss, params, aj.sgd, Batches(), num_steps=5,
                                   min_lr=1e-6, max_lr=1e-5)
    np.testing.assert_allclose(result.losses, [2.0, 4.0, 2.0, 4.0, 2.0], rtol=1e-4)


def test_small_mlp_suggestion_trains_well():
    problem = small_mlp()
    params = as_params(problem, MLP_PARAM_NAMES, jnp.float32)
    x, y = jnp.asarray(problem["X"], jnp.float32), jnp.asarray(problem["Y"], jnp.float32)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    loss = lambda p, batch: mlp_loss(p, *batch)
    factory = lambda lr: aj.sgd(lr, momentum=0.9)
    result = aj.find_learning_rate(loss, params, factory, batches, min_lr=1e-5, max_lr=100.0,
                                   num_steps=200)
    assert result.diverged and np.isfinite(result.suggested_lr)
    turning = result.learning_rates[np.argmin(result.smoothed_losses)]
    assert result.suggested_lr == pytest.approx(turning / 10)

    def train(lr, steps=150):
        tx, p = factory(lr), params
        state = tx.init(p)

        @jax.jit
        def step(p, state):
            g = jax.grad(mlp_loss)(p, x, y)
            u, state = tx.update(g, state, p)
            return aj.apply_updates(p, u), state

        for _ in range(steps):
            p, state = step(p, state)
        return float(mlp_loss(p, x, y))

    initial = float(mlp_loss(params, x, y))
    suggested = train(result.suggested_lr)
    assert suggested < 0.2 * initial
    assert suggested < train(result.suggested_lr / 100)  # faster than a timid rate
    assert not train(turning * 10) < suggested  # past the turning point: worse or diverged


def test_plot_draws_the_curves_and_the_suggestion(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss, params, _, _ = quadratic()
    result = aj.find_learning_rate(loss, params, aj.sgd, [None], min_lr=1e-5, max_lr=1.0,
                                   num_steps=60)
    ax = result.plot(skip_start=2)
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 3
    ax.figure.savefig(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 0
    plt.close(ax.figure)


def test_plot_without_matplotlib_says_how_to_install_it(monkeypatch):
    result = lr_finder.LRFinderResult(np.ones(3), np.ones(3), np.ones(3), {}, 1.0,
                                      "tenth_of_minimum", False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        result.plot()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(min_lr=0.0), "min_lr"),
        (dict(min_lr=1.0, max_lr=0.5), "max_lr"),
        (dict(num_steps=1), "num_steps"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(divergence_factor=1.0), "divergence_factor"),
        (dict(rule="valley"), "rule"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        aj.find_learning_rate(lambda p, b: 0.0, {}, aj.sgd, [None], **kwargs)


@pytest.mark.slow
def test_example_runs_and_writes_the_plot(tmp_path):
    from tests.test_examples import load

    out = load("lr_finder").main(["--quick", "--out", str(tmp_path)])
    assert out["result"].diverged and np.isfinite(out["result"].suggested_lr)
    assert (tmp_path / "lr_finder.png").stat().st_size > 10_000
    accuracy = out["accuracies"]
    assert accuracy["suggested"] > 0.8
    assert accuracy["suggested"] > accuracy["suggested / 100"] + 0.2
    assert not accuracy["10 x turning point"] > accuracy["suggested"]  # worse, or diverged (nan)
