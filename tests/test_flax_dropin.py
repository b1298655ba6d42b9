"""aj.flax.Optimizer / aj.flax.TrainState against Flax's own classes (the plain path)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj

pytest.importorskip("flax")


def _data():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
            jnp.asarray(rng.normal(size=(16, 3)), jnp.float32))


def _nnx_run(make_optimizer, kernel_check=False):
    from flax import nnx

    x, y = _data()

    class Mlp(nnx.Module):
        def __init__(self):
            self.a = nnx.Linear(6, 8, rngs=nnx.Rngs(0))
            self.b = nnx.Linear(8, 3, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    model = Mlp()
    opt = make_optimizer(model)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, opt):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)

    def numbers():
        trees = [nnx.to_pure_dict(nnx.state(t)) for t in (model, opt.opt_state)]
        return jax.tree.map(np.asarray, trees), int(opt.step[...])

    for _ in range(3):
        step(model, opt)
    jitted = numbers()
    opt.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))  # eager
    return jitted, numbers()


def test_nnx_optimizer_matches_nnx_optimizer(standard_promotion, native_kernels):
    from flax import nnx

    tx = aj.adamw(1e-2, weight_decay=1e-2)
    plain = _nnx_run(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))
    xla = _nnx_run(lambda m: aj.flax.Optimizer(m, tx, wrt=nnx.Param, kernel=False))
    native = _nnx_run(lambda m: aj.flax.Optimizer(m, tx, wrt=nnx.Param, kernel=True))
    assert plain[0][1] == xla[0][1] == native[0][1] == 3
    assert plain[1][1] == xla[1][1] == native[1][1] == 4
    # Inside nnx.jit the arithmetic is the same: bit-identical on the XLA path.
    jax.tree.map(np.testing.assert_array_equal, xla[0][0], plain[0][0])
    # The kernel (and, eagerly, a compiled step against op-by-op) reorders: rtol 1e-6.
    for ours in (native[0][0], native[1][0], xla[1][0]):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                     ours, plain[1][0] if ours is not native[0][0] else plain[0][0])


def test_nnx_optimizer_runs_the_kernel_and_validates(standard_promotion, native_kernels):
    from flax import nnx

    model = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    opt = aj.flax.Optimizer(model, aj.adam(1e-3), wrt=nnx.Param, kernel=True)
    graphdef, state = nnx.split((model, opt))

    def step(state):
        model, opt = nnx.merge(graphdef, state)
        opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
        return nnx.state((model, opt))

    assert "accel_jax_adam_f32" in jax.jit(step).lower(state).as_text()
    with pytest.raises(ValueError, match="kernel must be None, True or False"):
        aj.flax.Optimizer(model, aj.adam(1e-3), wrt=nnx.Param, kernel=1)


def _train_state_run(cls, tx, kernel_check=False, **kw):
    import flax.linen as nn

    x, y = _data()
    module = nn.Dense(3)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    state = cls.create(apply_fn=module.apply, params=params, tx=tx, **kw)

    def step(state):
        loss = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)  # noqa: E731
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    if kernel_check:
        assert "accel_jax_adam_f32" in jax.jit(step).lower(state).as_text()
    jitted = jax.jit(step, donate_argnums=0)
    for _ in range(3):
        state = jitted(state)
    numbers = jax.tree.map(np.asarray, (state.params, state.opt_state))
    return numbers, step(state)  # and one eager apply_gradients


def test_train_state_matches_flax_train_state(standard_promotion, native_kernels):
    from flax.training import train_state

    tx = aj.adam(1e-2)
    plain = _train_state_run(train_state.TrainState, tx)
    xla = _train_state_run(aj.flax.TrainState, tx, kernel=False)
    native = _train_state_run(aj.flax.TrainState, tx, kernel_check=True, kernel=True)
    assert int(plain[1].step) == int(xla[1].step) == int(native[1].step) == 4
    jax.tree.map(np.testing.assert_array_equal, xla[0], plain[0])  # jitted: same arithmetic
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # noqa: E731
    jax.tree.map(close, native[0], plain[0])
    for ours in (xla[1], native[1]):
        jax.tree.map(close, (ours.params, ours.opt_state), (plain[1].params, plain[1].opt_state))


def test_train_state_overwrite_with_gradient(standard_promotion):
    from flax.training import train_state

    key = train_state.OVERWRITE_WITH_GRADIENT
    params = {"params": {"w": jnp.ones(2)}, key: {"s": jnp.zeros(1)}}
    grads = {"params": {"w": jnp.full(2, 2.0)}, key: {"s": jnp.full(1, 7.0)}}
    ours = aj.flax.TrainState.create(apply_fn=None, params=params, tx=aj.sgd(0.5))
    theirs = train_state.TrainState.create(apply_fn=None, params=params, tx=aj.sgd(0.5))
    jax.tree.map(np.testing.assert_array_equal, ours.apply_gradients(grads=grads).params,
                 theirs.apply_gradients(grads=grads).params)


def test_importing_accel_jax_does_not_import_flax():
    code = "import sys, accel_jax; assert 'flax' not in sys.modules; accel_jax.flax.Optimizer"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
