"""The named optimizers: a registry of optimizers x problems x dtypes, and their contract.

Numerical conformance with optax, torch.optim and Keras is in test_conformance.py;
here: every optimizer decreases the loss on every problem in every dtype, keeps
dtypes, passes None and integer leaves through, validates its arguments, reports
mismatched trees by path, does not recompile on the second call, and trains a
small MLP on scikit-learn's digits to a sensible loss.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from tests import problems

OPTIMIZERS = {
    "sgd": lambda lr: aj.sgd(lr),
    "momentum": lambda lr: aj.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: aj.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": lambda lr: aj.adagrad(lr * 10),
    "rmsprop": lambda lr: aj.rmsprop(lr),
    "rmsprop_centered_momentum": lambda lr: aj.rmsprop(lr, centered=True, momentum=0.9),
    "adam": lambda lr: aj.adam(lr),
    "amsgrad": lambda lr: aj.adam(lr, amsgrad=True),
    "adamax": lambda lr: aj.adamax(lr),
    "nadam": lambda lr: aj.nadam(lr, convention="torch"),
    "adamw": lambda lr: aj.adamw(lr, weight_decay=1e-2),
    # RAdam's first 5 steps are momentum SGD: 0.05 diverges on the quadratic, cap the rate.
    "radam": lambda lr: aj.radam(min(lr, 0.02)),
    "nadamw": lambda lr: aj.nadamw(lr, weight_decay=1e-2),
    "adadelta": lambda lr: aj.adadelta(lr * 100),  # Adadelta's rate is ~1
    "lion": lambda lr: aj.lion(lr / 3),  # sign steps: 3-10x below Adam's rate
    "schedule_free_adamw": lambda lr: aj.schedule_free_adamw(lr, weight_decay=1e-4),
    "schedule_free_sgd": lambda lr: aj.schedule_free_sgd(lr),
    # (adafactor, lamb, lars): trust ratios make the step ~ eta * ||w||, whatever ||g||.
    "lamb": lambda lr: aj.lamb(lr),
    "lars": lambda lr: aj.lars(lr * 20, trust_coefficient=0.01),
    "adafactor": lambda lr: aj.adafactor(lr, min_dim_size_to_factor=4),
    # (muon): matrices at twice the rate, AdamW at the rate on the other leaves
    "muon": lambda lr: aj.muon(lr * 2, adam_learning_rate=lr),
}
# (learning rate for sgd-like, learning rate for adaptive)
LEARNING_RATES = {"quadratic": (0.005, 0.05), "mlp": (0.1, 0.01)}
ADAPTIVE = {"adagrad", "rmsprop", "rmsprop_centered_momentum", "adam", "amsgrad", "adamax",
            "nadam", "adamw", "schedule_free_adamw"}
ADAPTIVE |= {"radam", "nadamw", "adadelta", "lion"}
ADAPTIVE |= {"lamb", "adafactor"}
ADAPTIVE |= {"muon"}


def make_problem(name, dtype):
    if name == "quadratic":
        p = problems.rotated_quadratic()
        a, b = jnp.asarray(p["A"], dtype), jnp.asarray(p["b"], dtype)
        params = {"x": jnp.asarray(p["x0"], dtype)}
        loss = lambda q: problems.quadratic_loss(q, a, b)
    else:
        p = problems.small_mlp()
        x, y = jnp.asarray(p["X"], dtype), jnp.asarray(p["Y"], dtype)
        params = problems.as_params(p, problems.MLP_PARAM_NAMES, dtype)
        loss = lambda q: problems.mlp_loss(q, x, y)
    return params, loss


def train(tx, params, loss, steps, state_dtype=jnp.float32):
    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda q: loss(q).astype(state_dtype))(p)
        u, s = tx.update(g, s, p)
        return (aj.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return p, s


@pytest.mark.parametrize("problem", ["quadratic", "mlp"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_optimizer_decreases_the_loss(name, problem, dtype):
    dtype = jnp.dtype(dtype)
    params, loss = make_problem(problem, dtype)
    lr = LEARNING_RATES[problem][name in ADAPTIVE]
    new, state = jax.jit(lambda p: train(OPTIMIZERS[name](lr), p, loss, 60))(params)
    jax.tree.map(lambda a, b: (a.dtype == b.dtype) or pytest.fail(f"dtype {a.dtype}"), new, params)
    before, after = float(loss(params).astype(jnp.float32)), float(loss(new).astype(jnp.float32))
    assert np.isfinite(after)
    assert after < 0.9 * before, (before, after)


def test_every_optimizer_in_float64(x64):
    params, loss = make_problem("quadratic", jnp.float64)
    for name, make in OPTIMIZERS.items():
        lr = LEARNING_RATES["quadratic"][name in ADAPTIVE]
        new, state = train(make(lr), params, loss, 40, jnp.float64)
        assert new["x"].dtype == jnp.float64
        assert all(
            x.dtype in (jnp.float64, jnp.int32) for x in jax.tree.leaves(state)
        ), name
        assert float(loss(new)) < float(loss(params)), name


def test_bf16_params_with_float32_moments_keep_dtypes():
    params = {"w": jnp.ones((4, 3), jnp.bfloat16)}
    tx = aj.adam(1e-2, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    state = tx.init(params)
    assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float32
    u, state = tx.update(jax.tree.map(lambda p: p * 0.1, params), state, params)
    assert u["w"].dtype == jnp.bfloat16
    tx16 = aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    s16 = tx16.init({"w": jnp.ones(3, jnp.float32)})
    assert s16[0].mu["w"].dtype == jnp.bfloat16 and s16[0].nu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_none_and_integer_leaves_pass_through(name):
    params = {"w": jnp.ones(3), "step": jnp.int32(7), "frozen": None}
    grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2), allow_int=True)(params)
    assert grads["step"].dtype == jax.dtypes.float0 and grads["frozen"] is None
    tx = OPTIMIZERS[name](0.1)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert u["frozen"] is None
    assert u["step"].dtype == jax.dtypes.float0
    new = aj.apply_updates(params, u)
    assert int(new["step"]) == 7 and new["frozen"] is None
    assert float(new["w"][0]) < 1.0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mismatched_tree_names_the_path(name):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones(2)}}
    tx = OPTIMIZERS[name](0.1)
    state = tx.init(params)
    bad = {"a": jnp.ones(2), "b": {"d": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"\['b'\]\['d'\]"):
        if name == "sgd":  # plain SGD holds no per-parameter state: apply_updates checks
            aj.apply_updates(params, tx.update(bad, state, params)[0])
        else:
            tx.update(bad, state, bad)


def test_plain_sgd_mismatch_is_caught_by_apply_updates():
    with pytest.raises(ValueError, match=r"\['z'\]"):
        aj.apply_updates({"a": jnp.ones(1)}, {"z": jnp.ones(1)})


BAD_HYPERPARAMETERS = [
    (aj.sgd, {"learning_rate": -0.1}, "learning_rate", r"\[0, inf\]"),
    (aj.sgd, {"learning_rate": 0.1, "momentum": 1.5}, "momentum", r"\[0, 1\]"),
    (aj.sgd, {"learning_rate": 0.1, "nesterov": True}, "nesterov", "momentum"),
    (aj.sgd, {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay", r"\[0, inf\]"),
    (aj.adam, {"learning_rate": 1e-3, "b1": 1.5}, "b1", r"\[0, 1\)"),
    (aj.adam, {"learning_rate": 1e-3, "b2": -0.1}, "b2", r"\[0, 1\)"),
    (aj.adam, {"learning_rate": 1e-3, "eps": -1e-8}, "eps", r"\[0, inf\]"),
    (aj.adam, {"learning_rate": 1e-3, "mu_dtype": jnp.int32}, "mu_dtype", "floating"),
    (aj.adam, {"learning_rate": 1e-3, "convention": "jax"}, "convention", "optax"),
    (aj.adamw, {"learning_rate": 1e-3, "weight_decay": -1.0}, "weight_decay", r"\[0, inf\]"),
    (aj.adagrad, {"learning_rate": 0.1, "initial_accumulator_value": -1}, "initial_acc", "0"),
    (aj.rmsprop, {"learning_rate": 0.1, "decay": 1.0}, "decay", r"\[0, 1\)"),
    (aj.rmsprop, {"learning_rate": float("nan")}, "learning_rate", "finite"),
    (aj.adamax, {"learning_rate": "fast"}, "learning_rate", "number"),
    (aj.nadam, {"learning_rate": 1e-3, "momentum_decay": -1.0}, "momentum_decay", "0"),
]


@pytest.mark.parametrize("factory, kwargs, name, allowed", BAD_HYPERPARAMETERS)
def test_bad_hyperparameter_is_rejected_at_construction(factory, kwargs, name, allowed):
    with pytest.raises(ValueError, match=name) as info:
        factory(**kwargs)
    assert pytest.importorskip("re").search(allowed, str(info.value)), str(info.value)
    bad_value = next((v for k, v in kwargs.items() if k == name), None)
    if bad_value is not None and not isinstance(bad_value, bool) and name != "mu_dtype":
        assert repr(bad_value) in str(info.value) or str(bad_value) in str(info.value)


def test_explicit_argument_overrides_the_convention():
    tx = aj.adagrad(0.1, eps=1e-3, convention="torch")
    state = tx.init({"w": jnp.zeros(1)})
    assert float(state[0].sum_of_squares["w"][0]) == 0.0  # torch's initial accumulator
    u, _ = tx.update({"w": jnp.ones(1)}, state)
    np.testing.assert_allclose(u["w"], -0.1 / (1.0 + 1e-3), rtol=1e-6)  # eps outside sqrt


@pytest.mark.parametrize("name", ["adam", "momentum", "rmsprop_centered_momentum"])
def test_second_call_does_not_recompile(name):
    traces = []
    tx = OPTIMIZERS[name](0.01)

    @jax.jit
    def step(params, state, grads):
        traces.append(1)  # runs only when tracing
        u, state = tx.update(grads, state, params)
        return aj.apply_updates(params, u), state

    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state, jax.tree.map(jnp.ones_like, params))
    assert len(traces) == 1


@functools.cache
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return jnp.asarray(x[:1200], jnp.float32), jnp.asarray(y[:1200])


DIGITS_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.05, "rmsprop": 1e-3,
             "rmsprop_centered_momentum": 3e-4, "adam": 3e-3, "amsgrad": 3e-3, "adamax": 5e-3,
             "nadam": 3e-3, "adamw": 3e-3, "schedule_free_adamw": 3e-3, "schedule_free_sgd": 0.1}
DIGITS_LR |= {"radam": 0.02, "nadamw": 3e-3, "adadelta": 0.01, "lion": 3e-3}
DIGITS_LR |= {"lamb": 2e-2, "lars": 0.1, "adafactor": 1e-2}
DIGITS_LR |= {"muon": 1e-2}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains_an_mlp_on_digits(name):
    x, y = digits()
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    params = {
        "w0": jax.random.normal(k1, (64, 64)) / 8.0, "b0": jnp.zeros(64),
        "w1": jax.random.normal(k2, (64, 10)) / 8.0, "b1": jnp.zeros(10),
    }

    def loss(p):
        h = jax.nn.relu(x @ p["w0"] + p["b0"])
        logits = h @ p["w1"] + p["b1"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    tx = (lambda lr: OPTIMIZERS[name](lr / (10 if name == "adagrad" else 1)))(DIGITS_LR[name])
    new, _ = jax.jit(lambda p: train(tx, p, loss, 150))(params)
    final = float(loss(new))
    assert float(loss(params)) > 2.0
    assert final < 0.3, final  # log(10) = 2.30 is chance level


class VariantsTest(chex.TestCase):
    """Every optimizer gives the same step with and without jit (chex variants), and its
    moment trees have the params' shapes (chex tree assertions)."""

    def _check(self, name):
        params = {"w": jnp.arange(6.0).reshape(2, 3) / 6, "b": jnp.ones(3)}
        grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
        tx = OPTIMIZERS[name](0.01)
        state = tx.init(params)
        # Factored second moments (adafactor) are by design not shaped like the params.
        factored = name == "adafactor"
        for leaf_tree in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, dict)):
            routed = isinstance(leaf_tree, dict) and any(  # a partition's group (muon)
                isinstance(x, aj.MaskedNode) for x in leaf_tree.values())
            if (isinstance(leaf_tree, dict) and set(leaf_tree) == set(params) and not routed
                    and not factored):
                chex.assert_trees_all_equal_shapes(leaf_tree, params)
        update = self.variant(tx.update)
        u, _ = update(grads, state, params)
        expected, _ = tx.update(grads, state, params)
        # Newton-Schulz (muon) amplifies float32 rounding: jit and eager differ by ~1e-6
        chex.assert_trees_all_close(u, expected, rtol=1e-5 if name == "muon" else 1e-6)
        chex.assert_trees_all_equal_dtypes(u, params)

    @chex.variants(with_jit=True, without_jit=True)
    def test_all_optimizers(self):
        for name in sorted(OPTIMIZERS):
            with self.subTest(name):
                self._check(name)
