"""optax drop-in (issue 11): the known breakages, optax's signatures, and the gap-closing
transformations, each checked against optax live."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accel_jax as aj

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.array([0.1, -0.3])}


def grads(i):
    return jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.1 * i, PARAMS)


def trajectory(tx, steps=4, params=PARAMS, extra=None, apply=True):
    """The updates of ``steps`` steps (params moved by them when ``apply``)."""
    state, out = tx.init(params), []
    for i in range(steps):
        u, state = tx.update(grads(i), state, params, **(extra or {}))
        out.append(u)
        params = optax.apply_updates(params, u) if apply else params
    return out, state


def same(ours, theirs, rtol=2e-5, atol=1e-7):
    """Close in float32: optax rounds ``b2`` and ``1 - b2`` separately (~1e-5 relative)."""
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def reference(fn, *args, **kwargs):
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- known bugs
def test_nested_masks_match_optax():  # optax issue 271's regression test
    outer = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    inner = {"w": True, "b": False}
    ours = aj.masked(aj.masked(aj.sgd(0.1, momentum=0.9), inner), outer)
    theirs = optax.masked(optax.masked(optax.sgd(0.1, momentum=0.9), inner), outer)
    same(trajectory(ours)[0], reference(trajectory, theirs)[0])


def test_apply_updates_none_params_and_mismatch_message():
    assert aj.apply_updates(None, jnp.ones(3)) is None
    with pytest.raises(ValueError, match="node types"):  # was an IndexError
        aj.apply_updates((jnp.ones(1),), [jnp.ones(1)])


@pytest.mark.parametrize("make", [lambda m: m.adam(0.1), lambda m: m.sgd(0.1, momentum=0.9)])
def test_python_scalar_params(make):
    params = {"a": 1.5, "b": jnp.array(2.0)}
    g = {"a": 0.5, "b": jnp.array(-1.0)}
    ours, state = make(aj), make(aj).init(params)
    for _ in range(2):
        u, state = ours.update(g, state, params)
    theirs = make(optax)
    ref_state = reference(theirs.init, params)
    for _ in range(2):
        ref, ref_state = reference(theirs.update, g, ref_state, params)
    same(u, ref)
    # a Python-int param (a step counter, say) passes through untouched
    tx = make(aj)
    u, _ = tx.update({**g, "n": 0}, tx.init({**params, "n": 3}), {**params, "n": 3})
    assert u["n"] == 0


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("adam", {}),
        ("adamw", {"weight_decay": 1e-2}),
        ("adam", {"amsgrad": True}),
        ("sgd", {"momentum": 0.9}),
        ("rmsprop", {"momentum": 0.9}),
        ("adagrad", {"eps": 1e-7}),
    ],
)
def test_inside_optax_inject_hyperparams(name, kwargs):
    injected = optax.inject_hyperparams(getattr(aj, name))(learning_rate=0.1, **kwargs)
    with jax.numpy_dtype_promotion("standard"):
        state = injected.init(PARAMS)
        step = jax.jit(injected.update)
        outs = []
        params = PARAMS
        for i in range(3):
            u, state = step(grads(i), state, params)
            params = optax.apply_updates(params, u)
            outs.append(u)
        state = optax.tree.set(state, learning_rate=jnp.asarray(0.05))
    plain = trajectory(getattr(aj, name)(0.1, **kwargs), steps=3)[0]
    same(outs, plain, rtol=1e-5)
    hp = aj.get_hyperparams(state)
    assert any(k.endswith("learning_rate") and np.isclose(v, 0.05) for k, v in hp.items())


@pytest.mark.parametrize(
    "make",
    [
        lambda: aj.masked(aj.adam(0.1), {"w": True, "b": False}),
        lambda: aj.adamw(0.1, mask={"w": True, "b": False}),
        lambda: aj.partition({"x": aj.sgd(0.1, momentum=0.9), "y": aj.adam(0.1)},
                             {"w": "x", "b": "y"}),
    ],
)
def test_optax_tree_map_params(make):
    tx = make()
    state = tx.init(PARAMS)
    mapped = optax.tree.map_params(tx, lambda p: p + 1.0, state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    changed = [not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(state), strict=True)]
    assert any(changed)
    # the step counts are not param-shaped: untouched
    counts = [x for x in jax.tree.leaves(mapped) if jnp.asarray(x).dtype == jnp.int32]
    assert all(int(c) == 0 for c in counts)


def test_complex_params_and_complex_mu_dtype():
    params = {"z": jnp.array([1.0 + 2.0j, -0.5j], jnp.complex64)}
    g = {"z": jnp.array([0.3 - 0.1j, 1.0 + 1.0j], jnp.complex64)}
    ours = aj.adam(0.1, mu_dtype=jnp.complex64)
    theirs = optax.adam(0.1, mu_dtype=jnp.complex64)
    s, r = ours.init(params), reference(theirs.init, params)
    for _ in range(3):
        u, s = ours.update(g, s, params)
        ref, r = reference(theirs.update, g, r, params)
    same(u, ref, rtol=1e-5)


def test_trace_accepts_momentum_one():
    same(trajectory(aj.trace(1.0))[0], reference(trajectory, optax.trace(decay=1.0))[0])
    with pytest.raises(ValueError, match="momentum"):
        aj.trace(1.5)


# --------------------------------------------------------------------------- optax signatures
SIGNATURES = {
    "trace(decay, nesterov)": lambda m: m.trace(0.9, True),
    "ema(decay, debias, accumulator_dtype)": lambda m: m.ema(0.9, False, jnp.float32),
    "scale(step_size)": lambda m: m.scale(step_size=-0.5),
    "scale_by_rms(bias_correction)": lambda m: m.scale_by_rms(
        0.9, 1e-8, eps_in_sqrt=False, bias_correction=True),
    "adamaxw": lambda m: m.adamaxw(0.1, weight_decay=0.1, mask={"w": True, "b": False}),
}


@pytest.mark.parametrize("make", SIGNATURES.values(), ids=SIGNATURES.keys())
def test_optax_signature(make):
    same(trajectory(make(aj))[0], reference(trajectory, make(optax))[0], atol=1e-6)


def test_sgd_accumulator_dtype():
    ours, theirs = aj.sgd(0.1, 0.9, accumulator_dtype=jnp.bfloat16), optax.sgd(0.1, 0.9, False,
                                                                          jnp.bfloat16)
    (u, s), (ref, r) = trajectory(ours, apply=False), reference(trajectory, theirs, apply=False)
    assert s[0].trace["w"].dtype == r[0].trace["w"].dtype == jnp.bfloat16
    same(u, ref, rtol=2e-2, atol=1e-3)  # bfloat16 velocity (2^-8), rounded at different points


SCHEDULES = {
    "exponential_decay": lambda m: m.exponential_decay(
        1.0, transition_steps=3, decay_rate=0.5, transition_begin=2, staircase=True,
        end_value=0.2),
    "exponential_decay_up": lambda m: m.exponential_decay(1.0, 2, 1.5, end_value=2.0),
    "cosine_decay_schedule": lambda m: m.cosine_decay_schedule(1.0, 10, 0.1, exponent=2.0),
    "piecewise_constant_schedule": lambda m: m.piecewise_constant_schedule(1.0, {3: 0.5, 6: 0.1}),
    "piecewise_interpolate_schedule": lambda m: m.piecewise_interpolate_schedule(
        "cosine", 1.0, {3: 0.5, 6: 0.1}),
    "warmup_constant_schedule": lambda m: m.warmup_constant_schedule(0.1, 1.0, 4),
    "warmup_cosine_decay_schedule": lambda m: m.warmup_cosine_decay_schedule(0.0, 1.0, 3, 10),
    "warmup_exponential_decay_schedule": lambda m: m.warmup_exponential_decay_schedule(
        0.0, 1.0, 3, 2, 0.5, 1, False, 0.3),
}


@pytest.mark.parametrize("make", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_optax_schedule(make):
    steps = jnp.arange(14)
    np.testing.assert_allclose(jax.vmap(make(aj))(steps), reference(jax.vmap(make(optax)), steps),
                               rtol=1e-6, atol=1e-7)


def test_reduce_on_plateau_with_optax_arguments():
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.90, 0.899, 0.95, 0.96, 0.97, 0.98]
    args = dict(factor=0.5, patience=2, rtol=1e-2, atol=0.0, cooldown=1, min_scale=0.1)
    ours, theirs = aj.reduce_on_plateau(**args), optax.contrib.reduce_on_plateau(**args)
    s, r = ours.init(PARAMS), reference(theirs.init, PARAMS)
    for loss in losses:
        u, s = ours.update(grads(0), s, value=loss)
        ref, r = reference(theirs.update, grads(0), r, value=loss)
        same(u, ref)
        assert int(s.plateau_count) == int(r.plateau_count)
    assert float(aj.get_hyperparams(s)["scale"]) == float(r.scale) < 1.0


def test_multi_steps_matches_optax():
    skip = functools.partial(aj.skip_large_updates, max_squared_norm=50.0)
    ours = aj.MultiSteps(aj.adam(0.1), lambda step: 2 + step % 2, should_skip_update_fn=skip)
    theirs = optax.MultiSteps(optax.adam(0.1), lambda step: 2 + step % 2,
                              should_skip_update_fn=functools.partial(
                                  optax.skip_large_updates, max_squared_norm=50.0))
    big = lambda i: jax.tree.map(lambda g: g * (10.0 if i == 3 else 1.0), grads(i))  # noqa: E731
    s, r = ours.init(PARAMS), reference(theirs.init, PARAMS)
    for i in range(7):
        u, s = ours.update(big(i), s, PARAMS)
        ref, r = reference(theirs.update, big(i), r, PARAMS)
        same(u, ref)
        assert bool(ours.has_updated(s)) == bool(theirs.has_updated(r))
    assert isinstance(ours.gradient_transformation(), aj.GradientTransformation)


# --------------------------------------------------------------------------- gap closers
GAPS = {
    "centralize": lambda m: m.centralize(),
    "add_noise": lambda m: m.add_noise(0.1, 0.55, key=1),
    "zero_nans": lambda m: m.chain(m.scale(step_size=-1.0), m.zero_nans()),
    "clip_by_block_rms": lambda m: m.clip_by_block_rms(0.5),
    "named_chain": lambda m: m.named_chain(("clip", m.clip(0.5)), ("opt", m.adam(0.1))),
    "conditionally_mask": lambda m: m.conditionally_mask(m.adam(0.1), lambda s: s % 2 == 0),
    "conditionally_transform": lambda m: m.conditionally_transform(
        m.sgd(0.1, momentum=0.9), lambda s: s >= 1),
    "apply_every": lambda m: m.chain(m.apply_every(2), m.sgd(0.1)),
    "flatten": lambda m: m.flatten(m.adam(0.1)),
    "scale_by_schedule": lambda m: m.scale_by_schedule(lambda t: 0.5 ** t),
    "apply_if_finite": lambda m: m.apply_if_finite(m.adam(0.1), 2),
}


@pytest.mark.parametrize("make", GAPS.values(), ids=GAPS.keys())
def test_gap_closer_matches_optax(make):
    same(trajectory(make(aj))[0], reference(trajectory, make(optax))[0], rtol=1e-5, atol=1e-7)


def test_zero_nans_and_keep_params_nonnegative():
    nan = {"w": jnp.array([[jnp.nan, 1.0], [0.0, 2.0]]), "b": jnp.array([1.0, -5.0])}
    for name in ("zero_nans", "keep_params_nonnegative"):
        ours, theirs = getattr(aj, name)(), getattr(optax, name)()
        params = jax.tree.map(jnp.abs, PARAMS)
        u, s = ours.update(nan, ours.init(params), params)
        ref, r = reference(theirs.update, nan, theirs.init(params), params)
        same(u, ref)
        same(s, r)


def test_lookahead_keeps_slow_weights_in_state():
    ours = aj.lookahead(aj.adam(0.1), sync_period=3, slow_step_size=0.5, reset_state=True)
    theirs = optax.lookahead(optax.adam(0.1), 3, 0.5, reset_state=True)
    params, s = PARAMS, ours.init(PARAMS)
    lp = optax.LookaheadParams.init_synced(PARAMS)
    r = reference(theirs.init, lp)
    for i in range(7):
        u, s = ours.update(grads(i), s, params)
        params = aj.apply_updates(params, u)
        ref, r = reference(theirs.update, grads(i), r, lp)
        lp = optax.apply_updates(lp, ref)
        same(params, lp.fast, atol=1e-5)  # Adam's float32 rounding (see same) over 7 steps
        same(s.slow, lp.slow, atol=1e-5)


def test_incremental_and_periodic_update():
    new, old = grads(1), grads(2)
    same(aj.incremental_update(new, old, 0.3), optax.incremental_update(new, old, 0.3))
    for step in (3, 4):
        same(aj.periodic_update(new, old, step, 2), optax.periodic_update(new, old, step, 2))


def test_skip_not_finite_and_large_updates_match_optax():
    for g in (grads(0), {"w": jnp.full((2, 2), jnp.inf), "b": jnp.zeros(2)}):
        for ours, theirs in [
            (aj.skip_not_finite, optax.skip_not_finite),
            (functools.partial(aj.skip_large_updates, max_squared_norm=1.0),
             functools.partial(optax.skip_large_updates, max_squared_norm=1.0)),
        ]:
            a, b = ours(g, 0, None), theirs(g, 0, None)
            assert bool(a[0]) == bool(b[0])
            same(a[1], b[1])


def test_skip_gradient_spikes():
    tx = aj.skip_gradient_spikes(aj.sgd(1.0, momentum=0.9), num_stds=4.0, warmup_steps=5)
    state = tx.init(PARAMS)
    rng = np.random.default_rng(0)
    norms = [1.0 + 0.05 * rng.standard_normal() for _ in range(8)] + [40.0, 1.0, float("nan")]
    step = jax.jit(tx.update)
    for i, n in enumerate(norms):
        g = jax.tree.map(lambda p, n=n: jnp.full_like(p, n / np.sqrt(6.0)), PARAMS)
        before = state.inner_state
        u, state = step(g, state, PARAMS)
        skipped = i in (8, 10)
        assert int(state.num_skipped) == sum(j <= i for j in (8, 10))
        if skipped:
            assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
            same(state.inner_state, before)
    expected = np.asarray(norms[:8] + [1.0])
    np.testing.assert_allclose(float(state.mean), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(state.var), expected.var(), rtol=1e-3)


# --------------------------------------------------------------------------- optax's wrappers
WRAPPERS = {
    "MultiSteps": lambda m, opt: m.MultiSteps(opt, 2).gradient_transformation(),
    "apply_if_finite": lambda m, opt: m.apply_if_finite(opt, 2),
    "masked": lambda m, opt: m.masked(opt, {"w": True, "b": False}),
    "inject_hyperparams": None,
    "chain": lambda m, opt: m.chain(m.clip_by_global_norm(1.0), opt),
}
OPTIMIZERS = {
    "sgd": dict(learning_rate=0.1, momentum=0.9, nesterov=True),
    "adam": dict(learning_rate=0.1),
    "adamw": dict(learning_rate=0.1, weight_decay=0.1),
    "rmsprop": dict(learning_rate=0.1, momentum=0.5),
    "adagrad": dict(learning_rate=0.1),
}


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS, ids=str)
def test_optax_wrappers_around_accel_jax(wrapper, name):
    kwargs = OPTIMIZERS[name]

    def build(module):
        if wrapper == "inject_hyperparams":
            return optax.inject_hyperparams(getattr(module, name))(**kwargs)
        return WRAPPERS[wrapper](optax, getattr(module, name)(**kwargs))

    ours = reference(trajectory, build(aj), steps=3)[0]
    theirs = reference(trajectory, build(optax), steps=3)[0]
    same(ours, theirs, rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------- documented differences
def test_one_cycle_and_cosine_restarts_differ_from_optax_as_documented():
    ours, theirs = aj.one_cycle(1.0, 100), optax.cosine_onecycle_schedule(100, 1.0)
    assert float(ours(29)) == pytest.approx(1.0)
    assert float(reference(theirs, 30)) == pytest.approx(1.0)
    assert float(ours(30)) < 1.0 and float(reference(theirs, 29)) < 1.0  # peaks one step apart
    restarts = aj.cosine_restarts(1.0, 10, t_mul=1.0)
    cycle = dict(init_value=1.0, peak_value=1.0, warmup_steps=0, decay_steps=10)
    sgdr = optax.sgdr_schedule([cycle] * 3)
    steps = jnp.arange(30)
    np.testing.assert_allclose(jax.vmap(restarts)(steps), reference(jax.vmap(sgdr), steps),
                               atol=1e-6)
    assert abs(float(aj.cosine_restarts(1.0, 10, t_mul=2.0)(15)) - float(reference(sgdr, 15))) > 0.1


# Optimizers accel_jax shares with optax by name (optax.contrib's for muon and schedule-free).
SHARED_OPTIMIZERS = [
    "sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "adamaxw", "nadam", "nadamw",
    "radam", "adadelta", "lion", "lamb", "lars", "adafactor",
]


@pytest.mark.parametrize("name", SHARED_OPTIMIZERS)
def test_positional_arguments_are_optax_order(name):
    """A positional call means the same in both: optax's positional parameters are ours, in
    optax's order (ours may add keyword-only ones). adamw once had weight_decay where optax
    has mu_dtype, so adamw(lr, b1, b2, eps, eps_root, None, 1e-4) decayed nothing."""
    import inspect

    def positional(fn):
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]

    theirs = positional(getattr(optax, name))
    assert positional(getattr(aj, name))[: len(theirs)] == theirs


def test_rmsprop_bias_correction_matches_optax(standard_promotion):
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    ours, theirs = aj.rmsprop(0.05, bias_correction=True), optax.rmsprop(0.05, bias_correction=True)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for i in range(5):
        g = {"w": jnp.cos(params["w"] * (i + 1))}
        u_ours, s_ours = ours.update(g, s_ours, params)
        u_theirs, s_theirs = theirs.update(g, s_theirs, params)
        np.testing.assert_allclose(u_ours["w"], u_theirs["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="plain RMSProp"):
        aj.rmsprop(0.05, centered=True, bias_correction=True)
