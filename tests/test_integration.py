"""accel_jax optimizers used unchanged in the frameworks and transformations users train with.

Each test runs the same optimizer through the framework and through a plain
reference loop and checks that the numbers agree.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj


def _data(n=32, d_in=5, d_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, d_in)), jnp.float32),
            jnp.asarray(rng.normal(size=(n, d_out)), jnp.float32))


def _plain_run(tx, params, loss, steps):
    state = tx.init(params)
    for _ in range(steps):
        g = jax.grad(loss)(params)
        u, state = tx.update(g, state, params)
        params = aj.apply_updates(params, u)
    return params


def test_flax_nnx_optimizer(standard_promotion):
    from flax import nnx

    x, y = _data()
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    init_params = {"kernel": model.kernel[...], "bias": model.bias[...]}
    tx = aj.adamw(1e-2, weight_decay=1e-2)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(5):
        step(model, optimizer)
    expected = _plain_run(
        tx, init_params, lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2), 5
    )
    np.testing.assert_allclose(model.kernel[...], expected["kernel"], rtol=1e-5, atol=1e-7)


def test_flax_nnx_functional_step_with_the_native_kernel(standard_promotion, native_kernels):
    """The fast step for NNX models (docs/performance.md): split, apply_step, merge."""
    from flax import nnx

    x, y = _data()
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    # Copies: the step donates the params' buffers, which the model shares.
    init_params = {"kernel": jnp.copy(model.kernel[...]), "bias": jnp.copy(model.bias[...])}
    tx = aj.adamw(1e-2, weight_decay=1e-2)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state):
        def loss(params):
            return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

        grads = jax.grad(loss)(params)
        return aj.apply_step(tx, params, opt_state, grads, kernel=True)

    for _ in range(5):
        params, opt_state = step(params, opt_state)
    nnx.update(model, params)
    expected = _plain_run(
        tx, init_params, lambda p: jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2), 5
    )
    np.testing.assert_allclose(model.kernel[...], expected["kernel"], rtol=1e-5, atol=1e-7)


def test_flax_linen_train_state(standard_promotion):
    import flax.linen as nn
    from flax.training import train_state

    x, y = _data()
    module = nn.Dense(3)
    variables = module.init(jax.random.PRNGKey(0), x)
    tx = aj.sgd(0.1, momentum=0.9, nesterov=True)
    state = train_state.TrainState.create(apply_fn=module.apply, params=variables["params"], tx=tx)

    @jax.jit
    def step(state):
        loss = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(5):
        state = step(state)
    expected = _plain_run(
        tx, variables["params"], lambda p: jnp.mean((module.apply({"params": p}, x) - y) ** 2), 5
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.params, expected
    )


def test_haiku_training_step(standard_promotion):
    import haiku as hk

    x, y = _data()
    net = hk.without_apply_rng(hk.transform(lambda z: hk.Linear(3)(z)))
    params = net.init(jax.random.PRNGKey(0), x)
    tx = aj.rmsprop(1e-2, centered=True, momentum=0.9)
    loss = lambda p: jnp.mean((net.apply(p, x) - y) ** 2)

    @jax.jit
    def step(params, state):
        u, state = tx.update(jax.grad(loss)(params), state, params)
        return aj.apply_updates(params, u), state

    p, s = params, tx.init(params)
    for _ in range(5):
        p, s = step(p, s)
    expected = _plain_run(tx, params, loss, 5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, expected)
    assert float(loss(p)) < float(loss(params))


def test_jit_with_donated_params_and_state():
    x, y = _data()
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    tx = aj.adam(1e-2)
    step = jax.jit(
        lambda p, s: (lambda u_s: (aj.apply_updates(p, u_s[0]), u_s[1]))(
            tx.update(jax.grad(loss)(p), s, p)
        ),
        donate_argnums=(0, 1),
    )
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    for _ in range(5):
        p, s = step(p, s)
    expected = _plain_run(tx, params, loss, 5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p, expected)


def test_pmap_over_8_devices_equals_single_device():
    n_dev = jax.local_device_count()
    assert n_dev == 8, "tests/conftest.py sets 8 simulated CPU devices"
    x, y = _data(n=64)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    loss = lambda p, xb, yb: jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)
    tx = aj.adam(1e-2)

    def step(p, s, xb, yb):
        g = jax.lax.pmean(jax.grad(loss)(p, xb, yb), "batch")
        u, s = tx.update(g, s, p)
        return aj.apply_updates(p, u), s

    pstep = jax.pmap(step, axis_name="batch")
    rep = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (n_dev, *a.shape)), t)
    p, s = rep(params), rep(tx.init(params))
    xs, ys = x.reshape(n_dev, -1, 5), y.reshape(n_dev, -1, 3)
    for _ in range(5):
        p, s = pstep(p, s, xs, ys)
    expected = _plain_run(tx, params, lambda q: loss(q, x, y), 5)
    for leaf, ref in zip(jax.tree.leaves(p), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(leaf[0], ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(leaf[0], leaf[7])  # replicas agree exactly


def test_jit_with_sharded_params_equals_unsharded():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("model",))
    x, y = _data(d_in=8, d_out=16)
    params = {"w": jnp.ones((8, 16)) * 0.1, "b": jnp.zeros(16)}
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    tx = aj.nadam(1e-2)
    shard = {"w": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P("model"))}
    sharded = jax.device_put(params, shard)
    state = tx.init(sharded)
    assert state[0].mu["w"].sharding.is_equivalent_to(shard["w"], 2)  # state follows params
    replicated = NamedSharding(mesh, P())
    out_shardings = jax.tree.map(
        lambda a: a.sharding if isinstance(a.sharding, NamedSharding) else replicated, state
    )
    jitted_init = jax.jit(tx.init, out_shardings=out_shardings)
    assert jitted_init(sharded)[0].nu["b"].sharding.is_equivalent_to(shard["b"], 1)

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return aj.apply_updates(p, u), s

    p, s = sharded, state
    for _ in range(5):
        p, s = step(p, s)
    expected = _plain_run(tx, params, loss, 5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, expected)


def test_vmap_over_a_batch_of_learning_rates():
    x, y = _data()
    params = {"w": jnp.zeros((5, 3))}
    loss = lambda p: jnp.mean((x @ p["w"] - y) ** 2)

    def final_loss(lr):
        tx = aj.sgd(lr, momentum=0.9)  # lr is traced here: validation lets it through
        p, s = params, tx.init(params)
        for _ in range(10):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            p = aj.apply_updates(p, u)
        return loss(p)

    lrs = jnp.array([0.0, 0.01, 0.05])
    batched = jax.jit(jax.vmap(final_loss))(lrs)
    singles = [float(final_loss(float(lr))) for lr in lrs]
    np.testing.assert_allclose(batched, singles, rtol=1e-6)
    assert batched[0] == pytest.approx(float(loss(params)))  # lr 0 changes nothing


def test_vmap_over_hyperparameters_stored_in_state():
    """The same compiled step, vmapped over states that carry different learning rates."""
    params = {"w": jnp.ones(3)}
    tx = aj.adam(1e-3)
    states = jax.vmap(lambda lr: aj.set_hyperparams(tx.init(params), learning_rate=lr))(
        jnp.array([1e-3, 1e-2])
    )
    grads = {"w": jnp.ones(3)}
    u, _ = jax.vmap(lambda s: tx.update(grads, s, params))(states)
    np.testing.assert_allclose(u["w"][:, 0], [-1e-3, -1e-2], rtol=1e-4)
