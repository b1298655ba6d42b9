"""Schedules: Keras 3 formulas (NumPy reference), torch.optim.lr_scheduler goldens, jit-safety."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from tests.problems import rotated_quadratic

GOLDENS = np.load(pathlib.Path(__file__).parent / "reference" / "torch_schedules.npz")


def evaluate(schedule, steps) -> np.ndarray:
    """The schedule at ``steps`` (an int32 array), computed by one jitted call."""
    return np.asarray(jax.jit(schedule)(jnp.asarray(steps, jnp.int32)), np.float64)


def golden(case: str) -> tuple[dict, dict]:
    config = json.loads(str(GOLDENS[f"{case}/config"]))
    arrays = {k.split("/", 1)[1]: GOLDENS[k] for k in GOLDENS.files if k.startswith(case + "/")}
    return config, arrays


# --- Keras 3 schedule formulas, written out in NumPy from keras.optimizers.schedules ---


def keras_exponential_decay(step, lr0, decay_steps, rate, staircase):
    p = step / decay_steps
    return lr0 * rate ** (np.floor(p) if staircase else p)


def keras_inverse_time_decay(step, lr0, decay_steps, rate):
    return lr0 / (1 + rate * step / decay_steps)


def keras_piecewise_constant(step, boundaries, values):
    # values[0] for step <= b[0]; values[i] for b[i-1] < step <= b[i]; values[-1] after.
    return np.asarray(values)[np.searchsorted(boundaries, step, side="left")]


def keras_polynomial_decay(step, lr0, decay_steps, end, power):
    s = np.minimum(step, decay_steps)
    return (lr0 - end) * (1 - s / decay_steps) ** power + end


def keras_cosine_decay(step, lr0, decay_steps, alpha, warmup_target=None, warmup_steps=0):
    def decay(s, start):
        frac = s / decay_steps
        return start * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * frac)) + alpha)

    if warmup_target is None:
        return decay(np.minimum(step, decay_steps), lr0)
    s = np.minimum(step, decay_steps + warmup_steps)
    ramp = (warmup_target - lr0) * s / warmup_steps + lr0
    return np.where(s < warmup_steps, ramp, decay(s - warmup_steps, warmup_target))


def keras_cosine_decay_restarts(step, lr0, first_steps, t_mul, m_mul, alpha):
    frac = step / first_steps
    if t_mul == 1.0:
        i = np.floor(frac)
        frac = frac - i
    else:
        i = np.floor(np.log(1.0 - frac * (1.0 - t_mul)) / np.log(t_mul))
        sum_r = (1.0 - t_mul**i) / (1.0 - t_mul)
        frac = (frac - sum_r) / t_mul**i
    decayed = 0.5 * m_mul**i * (1.0 + np.cos(np.pi * frac))
    return lr0 * ((1 - alpha) * decayed + alpha)


STEPS = np.arange(0, 130)

KERAS_CASES = {
    "exponential": (
        lambda: aj.exponential_decay(0.1, 10, 0.5),
        lambda t: keras_exponential_decay(t, 0.1, 10, 0.5, False),
    ),
    "exponential_staircase": (
        lambda: aj.exponential_decay(0.1, 7, 0.3, staircase=True),
        lambda t: keras_exponential_decay(t, 0.1, 7, 0.3, True),
    ),
    "seeds_exponential_0.1": (  # the seeds' eta0 * 0.1**(t/s)
        lambda: aj.exponential_decay(0.2, 50, 0.1),
        lambda t: 0.2 * 0.1 ** (t / 50),
    ),
    "inverse_time": (
        lambda: aj.power_decay(0.1, 20 / 0.5),
        lambda t: keras_inverse_time_decay(t, 0.1, 20, 0.5),
    ),
    "seeds_power_c2": (
        lambda: aj.power_decay(0.1, 15, 2.0),
        lambda t: 0.1 / (1 + t / 15) ** 2,
    ),
    "piecewise_constant": (
        lambda: aj.piecewise_constant([11, 31, 81], [0.1, 0.05, 0.01, 0.001]),
        lambda t: keras_piecewise_constant(t, [10, 30, 80], [0.1, 0.05, 0.01, 0.001]),
    ),
    "polynomial_sqrt": (
        lambda: aj.polynomial_schedule(0.1, 0.001, 0.5, 100),
        lambda t: keras_polynomial_decay(t, 0.1, 100, 0.001, 0.5),
    ),
    "polynomial_linear": (
        lambda: aj.linear_schedule(0.1, 0.01, 60),
        lambda t: keras_polynomial_decay(t, 0.1, 60, 0.01, 1.0),
    ),
    "cosine": (
        lambda: aj.cosine_decay(0.1, 100, alpha=0.05),
        lambda t: keras_cosine_decay(t, 0.1, 100, 0.05),
    ),
    "cosine_warmup": (
        lambda: aj.warmup(aj.cosine_decay(0.5, 80, alpha=0.1), 20, init_value=0.01),
        lambda t: keras_cosine_decay(t, 0.01, 80, 0.1, warmup_target=0.5, warmup_steps=20),
    ),
    "cosine_restarts": (
        lambda: aj.cosine_restarts(0.1, 10, t_mul=2.0, m_mul=0.8, alpha=0.1),
        lambda t: keras_cosine_decay_restarts(t, 0.1, 10, 2.0, 0.8, 0.1),
    ),
    "cosine_restarts_t_mul_1": (
        lambda: aj.cosine_restarts(0.1, 9, t_mul=1.0, m_mul=0.5),
        lambda t: keras_cosine_decay_restarts(t, 0.1, 9, 1.0, 0.5, 0.0),
    ),
    "cosine_restarts_t_mul_1.5": (
        lambda: aj.cosine_restarts(0.1, 8, t_mul=1.5, alpha=0.0),
        lambda t: keras_cosine_decay_restarts(t, 0.1, 8, 1.5, 1.0, 0.0),
    ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_matches_keras_formula_float64(case):
    make, reference = KERAS_CASES[case]
    np.testing.assert_allclose(evaluate(make(), STEPS), reference(STEPS.astype(float)), rtol=1e-6)


@pytest.mark.parametrize("case", ["exponential", "cosine_warmup", "cosine_restarts"])
def test_matches_keras_formula_float32(case):
    make, reference = KERAS_CASES[case]
    got = jax.jit(make())(jnp.asarray(STEPS, jnp.int32))
    assert got.dtype == jnp.float32
    want = reference(STEPS.astype(float))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=1e-7 * np.max(want))


def test_cosine_restarts_period_boundaries_are_exact():
    # Keras' log-based restart index can round down at a restart; the corrected one does not.
    s = aj.cosine_restarts(1.0, 5, t_mul=3.0)
    starts = [0, 5, 20, 65, 200]  # 5 * (3**i - 1) / 2
    np.testing.assert_allclose(evaluate(s, starts), 1.0, rtol=1e-6)
    lengths = [5 * 3**i for i in range(4)]  # the last step of each period, one before a restart
    last = [(1 + np.cos(np.pi * (n - 1) / n)) / 2 for n in lengths]
    np.testing.assert_allclose(evaluate(s, [s_ - 1 for s_ in starts[1:]]), last, rtol=1e-4)


# --- torch.optim.lr_scheduler goldens (scripts/make_torch_schedule_goldens.py) ---


def torch_equivalent(config: dict):
    """The accel_jax schedule (and momentum schedule) for a torch scheduler config."""
    name, kw, lr = config["scheduler"], config["kwargs"], config["lr"]
    if name == "OneCycleLR":
        common = dict(
            total_steps=kw["total_steps"],
            pct_start=kw.get("pct_start", 0.3),
            anneal_strategy=kw.get("anneal_strategy", "cos"),
            three_phase=kw.get("three_phase", False),
        )
        lr_schedule = aj.one_cycle(
            kw["max_lr"], div_factor=kw.get("div_factor", 25.0),
            final_div_factor=kw.get("final_div_factor", 1e4), **common,
        )
        momentum = aj.one_cycle_momentum(
            base_momentum=kw.get("base_momentum", 0.85),
            max_momentum=kw.get("max_momentum", 0.95), **common,
        )
        return lr_schedule, momentum
    if name == "StepLR":
        return aj.step_decay(lr, kw["step_size"], kw["gamma"]), None
    if name == "MultiStepLR":
        values = [lr * kw["gamma"] ** i for i in range(len(kw["milestones"]) + 1)]
        return aj.piecewise_constant(kw["milestones"], values), None
    if name == "ExponentialLR":
        return aj.exponential_decay(lr, 1, kw["gamma"]), None
    if name == "CosineAnnealingLR":
        return aj.cosine_decay(lr, kw["T_max"], alpha=kw["eta_min"] / lr), None
    if name == "PolynomialLR":
        return aj.polynomial_schedule(lr, 0.0, kw["power"], kw["total_iters"]), None
    if name == "LinearLR":
        start, end = lr * kw["start_factor"], lr * kw["end_factor"]
        return aj.linear_schedule(start, end, kw["total_iters"]), None
    if name == "CosineAnnealingWarmRestarts":
        sched = aj.cosine_restarts(lr, kw["T_0"], float(kw["T_mult"]), 1.0, kw["eta_min"] / lr)
        return sched, None
    raise AssertionError(name)


SCHEDULER_CASES = sorted(
    {k.split("/")[0] for k in GOLDENS.files if "/" in k}
    - {k.split("/")[0] for k in GOLDENS.files if k.startswith(("plateau", "trajectory"))}
)


def test_goldens_cover_the_issue_list():
    names = {golden(c)[0]["scheduler"] for c in SCHEDULER_CASES}
    assert {"OneCycleLR", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR",
            "PolynomialLR"} <= names
    assert any("momentum" in golden(c)[1] for c in SCHEDULER_CASES)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", SCHEDULER_CASES)
def test_matches_torch_scheduler(case):
    config, arrays = golden(case)
    lr_schedule, momentum = torch_equivalent(config)
    steps = np.arange(config["steps"])
    got = evaluate(lr_schedule, steps)
    want = arrays["lr"]
    if config["scheduler"] == "CosineAnnealingLR":
        # Documented difference: past T_max torch follows the cosine back up, accel_jax
        # (like Keras and optax) stays at the floor eta_min.
        t_max, floor = config["kwargs"]["T_max"], config["kwargs"]["eta_min"]
        np.testing.assert_allclose(got[t_max:], floor, rtol=1e-6)
        assert np.all(want[t_max + 1:] > floor)
        got, want, steps = got[: t_max + 1], want[: t_max + 1], steps[: t_max + 1]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-15)
    assert got[0] == pytest.approx(want[0], rel=1e-12) and got[-1] == pytest.approx(want[-1])
    if "momentum" in arrays:
        np.testing.assert_allclose(evaluate(momentum, steps), arrays["momentum"], rtol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "case", ["one_cycle_cos_momentum", "one_cycle_linear_three_phase_momentum"]
)
def test_one_cycle_holds_its_final_values_past_the_end(case):
    config, arrays = golden(case)
    lr_schedule, momentum = torch_equivalent(config)
    total = config["kwargs"]["total_steps"]
    past = np.arange(total, total + 50)
    np.testing.assert_allclose(evaluate(lr_schedule, past), arrays["lr"][-1], rtol=1e-12)
    np.testing.assert_allclose(evaluate(momentum, past), arrays["momentum"][-1], rtol=1e-12)


TRAJECTORY_CASES = sorted({k.split("/")[0] for k in GOLDENS.files if k.startswith("trajectory")})


def _accel_jax_trajectory(config: dict, dtype) -> np.ndarray:
    problem = rotated_quadratic()
    a, b = jnp.asarray(problem["A"], dtype), jnp.asarray(problem["b"], dtype)
    lr_schedule, momentum = torch_equivalent({"scheduler": "OneCycleLR", "lr": config["lr"],
                                              "kwargs": config["kwargs"]})
    okw = config["optimizer_kwargs"]
    if config["optimizer"] == "SGD":
        tx = aj.sgd(lr_schedule, momentum=momentum, nesterov=okw.get("nesterov", False),
                    convention="torch")
    else:
        tx = aj.adam(lr_schedule, b1=momentum, b2=okw["betas"][1], convention="torch")
    params = {"x": jnp.asarray(problem["x0"], dtype)}

    def step(carry, _):
        params, state = carry
        grads = {"x": a @ params["x"] - b}
        updates, state = tx.update(grads, state, params)
        params = aj.apply_updates(params, updates)
        return (params, state), params["x"]

    _, xs = jax.lax.scan(jax.jit(step), (params, tx.init(params)), None, length=config["steps"])
    return np.asarray(xs, np.float64)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", TRAJECTORY_CASES)
def test_scheduled_momentum_matches_torch_trajectory_float64(case):
    config, arrays = golden(case)
    np.testing.assert_allclose(_accel_jax_trajectory(config, jnp.float64), arrays["x"], rtol=1e-6,
                               atol=1e-9)


@pytest.mark.parametrize("case", TRAJECTORY_CASES)
def test_scheduled_momentum_matches_torch_trajectory_float32(case):
    config, arrays = golden(case)
    got = _accel_jax_trajectory(config, jnp.float32)
    np.testing.assert_allclose(got, arrays["x"], rtol=1e-5, atol=1e-5 * np.abs(arrays["x"]).max())


# --- properties every schedule keeps ---

ALL_SCHEDULES = {
    "constant": lambda: aj.constant_schedule(0.3),
    "power": lambda: aj.power_decay(0.1, 10.0, 1.5),
    "exponential": lambda: aj.exponential_decay(0.1, 10, 0.5, staircase=True),
    "step_decay": lambda: aj.step_decay(0.1, 7, 0.5),
    "piecewise": lambda: aj.piecewise_constant([5, 10], [0.3, 0.2, 0.1]),
    "linear": lambda: aj.linear_schedule(0.0, 0.1, 20, transition_begin=5),
    "polynomial": lambda: aj.polynomial_schedule(0.1, 0.0, 2.0, 30),
    "cosine": lambda: aj.cosine_decay(0.1, 30, alpha=0.1),
    "warmup": lambda: aj.warmup(aj.exponential_decay(0.1, 10, 0.5), 5),
    "restarts": lambda: aj.cosine_restarts(0.1, 5),
    "one_cycle": lambda: aj.one_cycle(0.1, 40, three_phase=True),
    "one_cycle_momentum": lambda: aj.one_cycle_momentum(40, anneal_strategy="linear"),
    "join": lambda: aj.join_schedules(
        [aj.linear_schedule(0.0, 0.1, 5), aj.constant_schedule(0.1), aj.cosine_decay(0.1, 10)],
        [5, 15],
    ),
}


def test_jit_with_traced_step_and_vectorised_steps_agree():
    steps = np.arange(0, 60, 7)
    for name, make in ALL_SCHEDULES.items():
        s = make()
        jitted = jax.jit(s)
        traced = np.array([float(jitted(jnp.asarray(t, jnp.int32))) for t in steps])
        scanned = jax.lax.scan(lambda c, t: (c, s(t)), 0, jnp.asarray(steps, jnp.int32))[1]
        np.testing.assert_allclose(traced, evaluate(s, steps), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(scanned, traced, rtol=1e-6, err_msg=name)
        value = jitted(jnp.int32(3))
        assert value.dtype == jnp.float32 and value.shape == (), name
        assert math.isfinite(float(jitted(jnp.iinfo(jnp.int32).max))), name


@pytest.mark.usefixtures("x64")
def test_computes_in_float64_under_x64():
    for name, make in ALL_SCHEDULES.items():
        assert jax.eval_shape(make(), jnp.int32(3)).dtype == jnp.float64, name


def test_join_schedules_restarts_each_piece_at_zero():
    s = aj.join_schedules([aj.constant_schedule(1.0), aj.linear_schedule(2.0, 0.0, 4)], [3])
    np.testing.assert_allclose(evaluate(s, range(9)), [1, 1, 1, 2, 1.5, 1, 0.5, 0, 0])


def test_step_decay_and_multistep_piecewise():
    np.testing.assert_allclose(
        evaluate(aj.step_decay(1.0, 3, 0.1), range(7)), [1, 1, 1, 0.1, 0.1, 0.1, 0.01], rtol=1e-6
    )


def test_warmup_reaches_the_wrapped_schedule_and_follows_it():
    inner = aj.cosine_decay(0.2, 10)
    s = aj.warmup(inner, 4, init_value=0.0)
    np.testing.assert_allclose(evaluate(s, range(4)), [0.0, 0.05, 0.1, 0.15], rtol=1e-6)
    np.testing.assert_allclose(evaluate(s, range(4, 20)), evaluate(inner, range(16)), rtol=1e-6)


def test_one_cycle_momentum_is_the_inverse_cycle():
    lr = evaluate(aj.one_cycle(1.0, 50), range(50))
    m = evaluate(aj.one_cycle_momentum(50), range(50))
    peak = int(np.argmax(lr))
    assert peak == 14 and int(np.argmin(m)) == peak
    assert np.all(np.diff(lr[: peak + 1]) > 0) and np.all(np.diff(m[: peak + 1]) < 0)
    assert np.all(np.diff(lr[peak:]) < 0) and np.all(np.diff(m[peak:]) > 0)


BAD_ARGUMENTS = [
    (lambda: aj.constant_schedule(float("nan")), "value"),
    (lambda: aj.power_decay(0.1, 0), "decay_steps"),
    (lambda: aj.power_decay(0.1, 10, -1.0), "power"),
    (lambda: aj.exponential_decay(0.1, -5, 0.5), "transition_steps"),
    (lambda: aj.exponential_decay(0.1, 5, 0.0), "decay_rate"),
    (lambda: aj.step_decay(0.1, 2.5), "step_size"),
    (lambda: aj.piecewise_constant([5, 3], [1.0, 2.0, 3.0]), "strictly increasing"),
    (lambda: aj.piecewise_constant([5], [1.0]), "one more element"),
    (lambda: aj.piecewise_constant([-1], [1.0, 2.0]), "boundaries[0]"),
    (lambda: aj.polynomial_schedule(0.1, 0.0, 0.0, 10), "power"),
    (lambda: aj.linear_schedule(0.1, 0.0, 0), "transition_steps"),
    (lambda: aj.linear_schedule(0.1, 0.0, 10, transition_begin=-1), "transition_begin"),
    (lambda: aj.cosine_decay(0.1, 10, alpha=float("nan")), "alpha"),
    (lambda: aj.warmup(0.1, 10), "schedule"),
    (lambda: aj.warmup(aj.constant_schedule(0.1), 0), "warmup_steps"),
    (lambda: aj.cosine_restarts(0.1, 10, t_mul=0.5), "t_mul"),
    (lambda: aj.one_cycle(0.1, 100, pct_start=1.0), "pct_start"),
    (lambda: aj.one_cycle(0.1, 100, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: aj.one_cycle(0.1, 100, div_factor=0.0), "div_factor"),
    (lambda: aj.one_cycle(0.1, 3), "zero length"),
    (lambda: aj.one_cycle_momentum(100, max_momentum=1.0), "max_momentum"),
    (lambda: aj.join_schedules([aj.constant_schedule(1.0)], [3]), "one more schedule"),
    (lambda: aj.join_schedules([aj.constant_schedule(1.0), 2.0], [3]), "schedules[1]"),
]


@pytest.mark.parametrize("build, message", BAD_ARGUMENTS)
def test_bad_arguments_fail_at_construction_naming_them(build, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build()
