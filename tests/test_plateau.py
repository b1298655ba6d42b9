"""reduce_on_plateau: torch ReduceLROnPlateau goldens, Keras ReduceLROnPlateau semantics
(NumPy re-implementation), negative values, chains, Flax training-step patterns."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj

GOLDENS = np.load(pathlib.Path(__file__).parent / "reference" / "torch_schedules.npz")
PLATEAU_CASES = sorted({k.split("/")[0] for k in GOLDENS.files if k.startswith("plateau")})
PARAMS = {"w": jnp.ones(2)}
# The reference sequences repeat values on purpose (plateaus); the warning for a
# per-epoch value fed at every step is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::accel_jax.PlateauRepeatWarning")


def scales(tx, values) -> np.ndarray:
    """The scale after each value, for one sequence ``[n]`` or a batch ``[b, n]``, in one jit."""

    def run(vals):
        def step(state, v):
            updates, state = tx.update({"w": jnp.ones(2)}, state, PARAMS, value=v)
            return state, (state.scale, updates["w"][0])

        s, u = jax.lax.scan(step, tx.init(PARAMS), vals)[1]
        return s, u

    values = jnp.asarray(values, jnp.float32)
    s, u = jax.jit(jax.vmap(run) if values.ndim == 2 else run)(values)
    np.testing.assert_allclose(u, s, rtol=1e-6)  # the updates are multiplied by the scale
    return np.asarray(s, np.float64)


# --- NumPy references: the two frameworks' callbacks, written out ---


def keras_reference(values, factor, patience, min_delta, cooldown, min_lr, mode="min"):
    """keras.callbacks.ReduceLROnPlateau.on_epoch_end (Keras 3), with the base rate 1."""
    lr, wait, cooldown_counter = 1.0, 0, 0
    best = np.inf if mode == "min" else -np.inf
    better = (lambda a, b: a < b - min_delta) if mode == "min" else (lambda a, b: a > b + min_delta)
    out = []
    for current in values:
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if better(current, best):
            best, wait = current, 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_lr):
                lr = max(lr * factor, min_lr)
                cooldown_counter, wait = cooldown, 0
        out.append(lr)
    return np.asarray(out)


def torch_reference(values, factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                    cooldown=0, min_lr=0.0, mode="min"):
    """torch.optim.lr_scheduler.ReduceLROnPlateau.step, with the margin threshold * |best|
    in rel mode (torch: best * (1 -+ threshold), the same for best > 0)."""
    lr, bad, cooldown_counter = 1.0, 0, 0
    best = np.inf if mode == "min" else -np.inf
    out = []
    for current in values:
        margin = threshold if threshold_mode == "abs" else (
            threshold * abs(best) if np.isfinite(best) else 0.0)
        improved = current < best - margin if mode == "min" else current > best + margin
        if improved:
            best, bad = current, 0
        else:
            bad += 1
        if cooldown_counter > 0:
            cooldown_counter -= 1
            bad = 0
        if bad > patience:
            lr = max(lr * factor, min_lr)
            cooldown_counter, bad = cooldown, 0
        out.append(lr)
    return np.asarray(out)


def from_torch_kwargs(kw: dict, **extra):
    return aj.reduce_on_plateau(
        kw.get("factor", 0.1), kw.get("patience", 10), mode=kw.get("mode", "min"),
        threshold=kw.get("threshold", 1e-4), threshold_mode=kw.get("threshold_mode", "rel"),
        cooldown=kw.get("cooldown", 0), min_scale=kw.get("min_lr", 0.0), **extra,
    )


# --- torch ---


@pytest.mark.parametrize("case", [c for c in PLATEAU_CASES if "quirk" not in c])
def test_matches_torch_reduce_lr_on_plateau(case):
    kw = json.loads(str(GOLDENS[f"{case}/config"]))["kwargs"]
    values, want = GOLDENS[f"{case}/values"], GOLDENS[f"{case}/lr"]
    assert want.min() < 1.0  # the scripted sequence makes torch reduce
    got = scales(from_torch_kwargs(kw), values)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, torch_reference(values, **kw), rtol=1e-6)


def test_negative_values_with_a_relative_threshold():
    case = "plateau_negative_min_rel_torch_quirk"
    kw = json.loads(str(GOLDENS[f"{case}/config"]))["kwargs"]
    values, torch_lr = GOLDENS[f"{case}/values"], GOLDENS[f"{case}/lr"]
    assert np.all(values < 0)
    # torch compares with best * (1 - threshold), above a negative best: every value,
    # worse ones included, "improves", and the rate is never reduced.
    assert np.all(torch_lr == 1.0)
    got = scales(from_torch_kwargs(kw), values)
    want = torch_reference(values, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # ... whereas the plateaus of the (shifted) sequence are detected as for positive values.
    positive = scales(from_torch_kwargs(kw), values + 4.0)
    assert got.min() < 0.1 and positive.min() < 0.1


@pytest.mark.parametrize("mode", ["min", "max"])
def test_sign_of_the_values_does_not_matter_with_an_absolute_threshold(mode):
    rng = np.random.default_rng(3)
    values = np.cumsum(rng.normal(0.0, 1.0, (6, 50)), axis=1).round(1)
    tx = aj.reduce_on_plateau(0.5, 2, mode=mode, threshold=0.3, threshold_mode="abs", cooldown=1)
    np.testing.assert_array_equal(scales(tx, values - 100.0), scales(tx, values + 100.0))


def test_relative_threshold_is_proportional_to_the_magnitude_of_best():
    # best = -10; min mode, threshold 0.1: an improvement must go below -11.
    tx = aj.reduce_on_plateau(0.5, 0, threshold=0.1)
    np.testing.assert_array_equal(scales(tx, [-10.0, -10.5, -11.5, -12.0]), [1, 0.5, 0.5, 0.25])
    tx = aj.reduce_on_plateau(0.5, 0, mode="max", threshold=0.1)  # best = -10: above -9
    np.testing.assert_array_equal(scales(tx, [-10.0, -9.5, -8.5, -8.0]), [1, 0.5, 0.5, 0.25])


# --- Keras ---

KERAS_CONFIGS = [
    dict(factor=0.5, patience=2, min_delta=0.01, cooldown=0, min_lr=0.0, mode="min"),
    dict(factor=0.1, patience=1, min_delta=0.0, cooldown=2, min_lr=1e-3, mode="min"),
    dict(factor=0.5, patience=0, min_delta=0.005, cooldown=1, min_lr=0.0, mode="max"),
    dict(factor=0.3, patience=3, min_delta=0.02, cooldown=3, min_lr=0.05, mode="max"),
    dict(factor=0.2, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0, mode="min"),
]


@pytest.mark.parametrize("config", KERAS_CONFIGS, ids=lambda c: f"p{c['patience']}c{c['cooldown']}")
def test_matches_keras_reduce_lr_on_plateau(config):
    rng = np.random.default_rng(config["patience"] * 10 + config["cooldown"])
    scripted = [GOLDENS[f"{c}/values"] for c in PLATEAU_CASES]
    walks = np.cumsum(rng.normal(0.0, 0.02, (40, 60)), axis=1)
    steps = rng.choice([0.0, 0.01], (40, 60)) * rng.integers(0, 2, (40, 60))
    values = np.concatenate([np.stack(scripted), walks, 1.0 - np.cumsum(steps, axis=1)])
    values = values.astype(np.float32)
    tx = aj.reduce_on_plateau(
        config["factor"], config["patience"], mode=config["mode"], threshold=config["min_delta"],
        cooldown=config["cooldown"], min_scale=config["min_lr"], convention="keras",
    )
    got = scales(tx, values)
    want = np.stack([keras_reference(v.astype(np.float64), **config) for v in values])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want.min() < 1.0


def test_keras_convention_is_torch_with_shifted_patience_and_cooldown():
    keras = aj.reduce_on_plateau(0.5, 3, cooldown=2, threshold=0.01, convention="keras")
    torch_like = aj.reduce_on_plateau(0.5, 2, cooldown=1, threshold=0.01, threshold_mode="abs")
    values = np.cumsum(np.random.default_rng(0).normal(0.0, 0.02, (8, 80)), axis=1)
    np.testing.assert_array_equal(scales(keras, values), scales(torch_like, values))


# --- optax (live) ---


@pytest.mark.parametrize("patience, cooldown, rtol, atol", [(1, 0, 0.0, 0.01), (3, 2, 0.002, 0.0),
                                                            (2, 1, 0.0, 0.005)])
def test_optax_contrib_is_patience_minus_one_for_positive_values(patience, cooldown, rtol, atol):
    from optax import contrib

    values = 5.0 + np.cumsum(np.random.default_rng(patience).normal(0.0, 0.02, (20, 60)), axis=1)
    theirs = contrib.reduce_on_plateau(0.5, patience, rtol, atol, cooldown)
    ours = aj.reduce_on_plateau(0.5, patience - 1, threshold=rtol or atol,
                                threshold_mode="rel" if rtol else "abs", cooldown=cooldown)

    def run(tx, v):
        def step(state, x):
            updates, state = tx.update({"w": jnp.ones(2)}, state, PARAMS, value=x)
            return state, updates["w"][0]

        return jax.lax.scan(step, tx.init(PARAMS), v)[1]

    with jax.numpy_dtype_promotion("standard"):
        want = jax.jit(jax.vmap(lambda v: run(theirs, v)))(jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(scales(ours, values), want, rtol=1e-6)
    assert np.min(want) < 1.0


# --- the transformation ---


def test_accumulation_size_judges_the_mean_of_each_window():
    rng = np.random.default_rng(1)
    values = np.concatenate([np.linspace(1.0, 0.9, 20), np.full(40, 0.9)])
    values = values + rng.normal(0, 0.01, 60)
    windowed = aj.reduce_on_plateau(0.5, 1, threshold=0.01, accumulation_size=4)
    per_window = aj.reduce_on_plateau(0.5, 1, threshold=0.01)
    means = values.astype(np.float32).reshape(15, 4).mean(axis=1)
    got = scales(windowed, values).reshape(15, 4)
    decided = scales(per_window, means)
    assert decided.min() < 1.0
    np.testing.assert_allclose(got[:, 3], decided, rtol=1e-6)
    # Between decisions the scale holds the previous decision's value.
    before = np.concatenate([[1.0], decided[:-1]])
    np.testing.assert_allclose(got[:, :3], np.repeat(before[:, None], 3, axis=1), rtol=1e-6)


def test_nan_counts_as_no_improvement_and_min_scale_is_a_floor():
    tx = aj.reduce_on_plateau(0.5, 0, min_scale=0.2)
    np.testing.assert_allclose(scales(tx, [1.0, np.nan, np.nan, np.nan, 0.5]),
                               [1.0, 0.5, 0.25, 0.2, 0.2])


@pytest.mark.parametrize(
    "make",
    [
        lambda p: aj.chain(aj.sgd(0.1, momentum=0.9), p),
        lambda p: aj.chain(aj.adam(0.1), aj.freeze(mask={"w": False, "b": True}), p),
        lambda p: aj.chain(aj.partition({"a": aj.sgd(0.1), "b": aj.adam(0.01)},
                                        {"w": "a", "b": "b"}), p),
        lambda p: optax.chain(aj.adam(0.1), p),
        lambda p: aj.chain(aj.sgd(0.1), aj.chain(aj.identity(), p)),
    ],
    ids=["sgd", "adam-freeze", "partition", "optax.chain", "nested"],
)
def test_last_element_of_any_chain_scales_the_step(make):
    params = {"w": jnp.ones(3), "b": jnp.zeros(1)}
    grads = {"w": jnp.full(3, 0.5), "b": jnp.ones(1)}
    plain = make(aj.identity())
    tx = make(aj.reduce_on_plateau(0.5, 0))

    @jax.jit
    def step(state, plain_state, value):
        u, state = tx.update(grads, state, params, value=value)
        want, plain_state = plain.update(grads, plain_state, params)
        return u, want, state, plain_state

    state, plain_state = tx.init(params), plain.init(params)
    for value, scale in [(1.0, 1.0), (2.0, 0.5), (3.0, 0.25)]:
        u, want, state, plain_state = step(state, plain_state, jnp.float32(value))
        for k in params:
            np.testing.assert_allclose(u[k], scale * want[k], rtol=1e-6)
        assert float(aj.get_hyperparams(state)["scale"]) == scale
    assert step._cache_size() == 1
    # set_hyperparams(scale=1) undoes the reductions.
    u, want, *_ = step(aj.set_hyperparams(state, scale=1.0), plain_state, jnp.float32(0.0))
    np.testing.assert_allclose(u["w"], want["w"], rtol=1e-6)


def test_state_is_arrays_and_updates_keep_their_dtype():
    tx = aj.reduce_on_plateau(0.5, 0)
    params = {"w": jnp.ones(3, jnp.bfloat16), "i": jnp.arange(2)}
    state = tx.init(params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    assert state.count.dtype == state.plateau_count.dtype == state.cooldown_count.dtype == jnp.int32
    grads = {"w": jnp.ones(3, jnp.bfloat16), "i": np.zeros(2, jax.dtypes.float0)}
    for value in (1.0, np.float64(2.0), jnp.asarray(3.0, jnp.bfloat16)):
        updates, state = jax.jit(lambda g, s, v: tx.update(g, s, value=v))(grads, state, value)
    assert updates["w"].dtype == jnp.bfloat16 and updates["i"].dtype == jax.dtypes.float0
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 0.25)
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


def test_missing_or_non_scalar_value_is_a_clear_error():
    tx = aj.chain(aj.sgd(0.1), aj.reduce_on_plateau())
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="value=loss.*apply_gradients"):
        tx.update(PARAMS, state, PARAMS)
    with pytest.raises(ValueError, match="scalar"):
        tx.update(PARAMS, state, PARAMS, value=jnp.ones(2))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(factor=1.0), "factor"),
        (dict(factor=0.0), "factor"),
        (dict(patience=-1), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(cooldown=-2), "cooldown"),
        (dict(threshold=-0.1), "threshold"),
        (dict(min_scale=2.0), "min_scale"),
        (dict(accumulation_size=0), "accumulation_size"),
        (dict(mode="auto"), "mode"),
        (dict(threshold_mode="relative"), "threshold_mode"),
        (dict(convention="tf"), "convention"),
        (dict(rtol=0.1, convention="torch"), "rtol"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        aj.reduce_on_plateau(**kwargs)


# --- Flax: TrainState (linen) and nnx.Optimizer ---


@pytest.mark.usefixtures("standard_promotion")
def test_flax_train_state_pattern():
    from flax.training import train_state

    x = jnp.linspace(-1.0, 1.0, 8)[:, None]
    y = 3.0 * x
    apply_fn = lambda p, x: x @ p["w"]
    tx = aj.chain(aj.sgd(0.2), aj.reduce_on_plateau(0.5, 0, threshold=0.0))
    state = train_state.TrainState.create(apply_fn=apply_fn, params={"w": jnp.zeros((1, 1))},
                                          tx=tx)

    @jax.jit
    def train_step(state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(
            state.params)
        return aj.apply_gradients(state, grads, value=loss), loss

    # TrainState.apply_gradients does not forward value=, and the error says what to do.
    grads = jax.grad(lambda p: jnp.mean((apply_fn(p, x) - y) ** 2))(state.params)
    with pytest.raises(ValueError, match="accel_jax.apply_gradients"):
        state.apply_gradients(grads=grads)
    losses = []
    for _ in range(30):
        state, loss = train_step(state)
        losses.append(float(loss))
    assert int(state.step) == 30 and losses[-1] < 1e-3 * losses[0]
    assert float(aj.get_hyperparams(state.opt_state)["scale"]) == 1.0  # kept improving
    state, _ = train_step(state.replace(params={"w": jnp.full((1, 1), 10.0)}))  # worse: reduce
    assert float(state.opt_state[1].scale) == 0.5


@pytest.mark.usefixtures("standard_promotion")
def test_flax_nnx_optimizer_forwards_value():
    from flax import nnx

    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    tx = aj.chain(aj.sgd(0.1, momentum=0.9), aj.reduce_on_plateau(0.5, 0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))

    @nnx.jit
    def train_step(model, optimizer, target):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        optimizer.update(model, grads, value=loss)
        return loss

    train_step(model, optimizer, y)
    train_step(model, optimizer, y + 100.0)  # a much worse loss: patience 0, reduce
    hp = aj.get_hyperparams(nnx.as_pure(optimizer.opt_state))
    assert float(hp["scale"]) == 0.5 and float(hp["learning_rate"]) == pytest.approx(0.1)


@pytest.mark.slow
def test_performance_scheduling_example(tmp_path, capsys):
    from tests.test_examples import load

    out = load("performance_scheduling").main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for name in ("linen", "nnx"):
        scales = [h["scale"] for h in out[name]]
        assert scales[0] == 1.0 and min(scales) < 1.0, name  # reduced on a plateau
        assert all(b in (a, a / 2) for a, b in zip(scales, scales[1:], strict=False)), name
        assert f"[{name}] epoch" in printed and "effective learning rate" in printed


def _feed(tx, values):
    """Feeds ``values`` through one jitted update each; returns the final state."""
    state = tx.init(PARAMS)
    update = jax.jit(lambda s, v: tx.update({"w": jnp.ones(2)}, s, PARAMS, value=v))
    for x in values:
        _, state = update(state, jnp.float32(x))
    jax.effects_barrier()
    return state


def test_a_per_epoch_value_fed_at_every_step_is_loud():
    """The README misuse: a validation loss measured once per epoch, fed unchanged at every
    step with accumulation_size=1, collapses the scale within the epoch; the reduction
    it causes raises a PlateauRepeatWarning at run time (under jit)."""
    epoch_losses, steps_per_epoch = [1.0, 0.9, 0.8], 20
    fed = [x for x in epoch_losses for _ in range(steps_per_epoch)]
    with pytest.warns(aj.PlateauRepeatWarning, match="accumulation_size"):
        state = _feed(aj.reduce_on_plateau(factor=0.5, patience=2), fed)
    assert float(state.scale) < 1e-3  # what the misuse does, silently before
    # The documented recipe: the repeats of one epoch average to one evaluation.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", aj.PlateauRepeatWarning)
        good = _feed(aj.reduce_on_plateau(factor=0.5, patience=2,
                                          accumulation_size=steps_per_epoch), fed)
        # A value that changes at every update never warns, whatever the reductions.
        noisy = _feed(aj.reduce_on_plateau(factor=0.5, patience=2),
                      [1.0 + 0.01 * (i % 7) for i in range(60)])
    assert float(good.scale) == 1.0
    assert float(noisy.scale) < 1.0
