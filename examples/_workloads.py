"""The workloads of the optimizer comparison (``examples/compare_optimizers.py``).

Each :class:`Workload` is a model, its initialization per seed, a training set that
lives in memory (nothing is downloaded), the minibatch order per seed, a validation
metric and a target on it fixed in advance:

* ``bowl``: the seeds' elongated bowl, ``f(w) = 0.5 (0.2 w0^2 + 5 w1^2)`` from
  ``(-9, 2.5)`` (condition number 25); metric: the loss itself, target 1e-3 (below 1e-6 all equal);
* ``digits``: scikit-learn's digits (1,797 8x8 images), MLP 64-64-64-10;
  metric: validation accuracy, target 96%;
* ``mnist1d``: MNIST-1D (Greydanus 2020; ``mnist1d.data.make_dataset()`` with its
  default arguments, generated procedurally: 4,000 training and 1,000 test signals of
  length 40), a 1-D CNN (three convolutions of 32 channels, a dense head);
  metric: validation accuracy, target 80%;
* ``charlm``: a character-level transformer language model (Flax NNX, 2 pre-LN
  blocks, width 64, 4 heads, context 32, batch 16) on the Python documentation's topics text
  (``pydoc_data.topics``, shipped with every Python); the last 10% is held out;
  metric: validation bits per character, target 3.3.

Parameters are plain dicts of arrays (``nnx.split`` then ``to_pure_dict``), so every
optimizer sees the same pytree paths (``.../kernel``, ``head/...``, ``embed/...``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark problem. ``loss(params, data, idx)`` is the minibatch loss, with
    ``idx`` one row of ``batch_indices``; ``evaluate(params, val)`` returns
    ``(validation loss, validation metric)``. Budgets are in steps per mode."""

    name: str
    title: str
    init: Callable[[int], Any]
    loss: Callable[[Any, Any, jax.Array], jax.Array]
    evaluate: Callable[[Any, Any], tuple[jax.Array, jax.Array]]
    data: Any  # training arrays, passed to the jitted programs as arguments
    val: Any
    batch_indices: Callable[[int, int], np.ndarray]  # (seed, steps) -> (steps, batch) int32
    metric: str
    higher_is_better: bool
    target: float
    steps: dict[str, int]  # budget per mode: quick / default / full
    eval_every: dict[str, int]
    log_scale: bool = False  # plot the metric on a log axis
    deterministic: bool = False  # no randomness: one seed says it all
    floor: float = 0.0  # final metrics below it count as equal (the bowl's float32 noise)

    def reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target


def _epoch_indices(n: int, batch: int, seed: int, steps: int) -> np.ndarray:
    """Shuffled epochs of full minibatches, concatenated: the same order for every optimizer."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch)
            for _ in range(epochs)]
    return np.concatenate(rows)[:steps].astype(np.int32)


def _nnx_params(model) -> tuple[Any, dict]:
    from flax import nnx

    graphdef, state = nnx.split(model)
    return graphdef, state.to_pure_dict()


def _classifier(make_model, x_train, y_train, x_val, y_val, batch: int, **kw) -> Workload:
    from flax import nnx

    graphdef, _ = _nnx_params(make_model(0))

    def logits(params, x):
        return nnx.merge(graphdef, params)(x)

    def loss(params, data, idx):
        x, y = data
        return _common.cross_entropy(logits(params, x[idx]), y[idx])

    def evaluate(params, val):
        x, y = val
        out = logits(params, x)
        return _common.cross_entropy(out, y), _common.accuracy(out, y)

    return Workload(
        init=lambda seed: _nnx_params(make_model(seed))[1],
        loss=loss,
        evaluate=evaluate,
        data=(jnp.asarray(x_train), jnp.asarray(y_train)),
        val=(jnp.asarray(x_val), jnp.asarray(y_val)),
        batch_indices=lambda seed, steps: _epoch_indices(len(y_train), batch, seed, steps),
        metric="val. accuracy",
        higher_is_better=True,
        **kw,
    )


# --- the elongated bowl ---------------------------------------------------------------

BOWL_CURVATURE = (0.2, 5.0)
BOWL_START = (-9.0, 2.5)


def bowl() -> Workload:
    a, b = BOWL_CURVATURE

    def loss(params, data, idx):
        w = params["w"]
        return 0.5 * (a * w[0] ** 2 + b * w[1] ** 2)

    def evaluate(params, val):
        value = loss(params, None, None)
        return value, value

    return Workload(
        name="bowl",
        title="elongated bowl 0.5 (0.2 w0^2 + 5 w1^2), full-batch, from (-9, 2.5)",
        init=lambda seed: {"w": jnp.asarray(BOWL_START, jnp.float32)},  # no randomness
        loss=loss,
        evaluate=evaluate,
        data=None,
        val=None,
        batch_indices=lambda seed, steps: np.zeros((steps, 1), np.int32),
        metric="loss",
        higher_is_better=False,
        target=1e-3,
        steps={"quick": 20, "default": 200, "full": 500},
        eval_every={"quick": 5, "default": 5, "full": 5},
        log_scale=True,
        deterministic=True,
        floor=1e-6,
    )


# --- scikit-learn digits ----------------------------------------------------------------


def digits() -> Workload:
    data = _common.load_digits(seed=0)
    return _classifier(
        lambda seed: _common.make_nnx_mlp(seed, hidden=(64, 64)),
        *data, batch=32,
        name="digits",
        title="scikit-learn digits, MLP 64-64-64-10 (Flax NNX), batch 32",
        target=0.96,
        steps={"quick": 20, "default": 880, "full": 2200},  # 44 steps per epoch
        eval_every={"quick": 10, "default": 44, "full": 44},
    )


# --- MNIST-1D -----------------------------------------------------------------------------


def load_mnist1d() -> tuple[np.ndarray, ...]:
    """``mnist1d.data.make_dataset()`` with its default arguments (generated, not downloaded).

    The generator seeds NumPy's global random state; it is restored afterwards.
    """
    from mnist1d.data import make_dataset

    saved = np.random.get_state()
    try:
        d = make_dataset()
    finally:
        np.random.set_state(saved)
    return (d["x"].astype(np.float32)[..., None], d["y"].astype(np.int32),
            d["x_test"].astype(np.float32)[..., None], d["y_test"].astype(np.int32))


def make_cnn1d(seed: int, channels: int = 32):
    """Conv(5) -> Conv(3, stride 2) -> Conv(3, stride 2), ReLU, 32 channels; dense head.

    Each convolution is a matmul over the unfolded windows ("same" padding), which
    XLA:CPU runs about 18x faster than ``lax.conv`` (``nnx.Conv``) at these tiny sizes.
    """
    from flax import nnx

    class Conv1D(nnx.Module):
        def __init__(self, cin: int, cout: int, size: int, stride: int, rngs: nnx.Rngs):
            init = nnx.initializers.lecun_normal()
            self.kernel = nnx.Param(init(rngs.params(), (size * cin, cout)))
            self.bias = nnx.Param(jnp.zeros((cout,)))
            self.size, self.stride = size, stride

        def __call__(self, x):  # (batch, length, cin) -> (batch, length / stride, cout)
            length, left = x.shape[1], (self.size - 1) // 2
            x = jnp.pad(x, ((0, 0), (left, self.size - 1 - left), (0, 0)))
            windows = [x[:, i : i + length : self.stride] for i in range(self.size)]
            return jnp.concatenate(windows, axis=-1) @ self.kernel + self.bias

    class CNN1D(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = Conv1D(1, channels, 5, 1, rngs)
            self.conv2 = Conv1D(channels, channels, 3, 2, rngs)
            self.conv3 = Conv1D(channels, channels, 3, 2, rngs)
            self.head = nnx.Linear(10 * channels, _common.NUM_CLASSES, rngs=rngs)

        def __call__(self, x):  # x: (batch, 40, 1)
            x = jax.nn.relu(self.conv1(x))
            x = jax.nn.relu(self.conv2(x))
            x = jax.nn.relu(self.conv3(x))
            return self.head(x.reshape(x.shape[0], -1))

    return CNN1D(nnx.Rngs(seed))


def mnist1d() -> Workload:
    return _classifier(
        make_cnn1d, *load_mnist1d(), batch=100,
        name="mnist1d",
        title="MNIST-1D (make_dataset defaults), 1-D CNN 3x32 channels (Flax NNX), batch 100",
        target=0.80,
        steps={"quick": 20, "default": 800, "full": 3000},  # 40 steps per epoch
        eval_every={"quick": 10, "default": 40, "full": 40},
    )


# --- character-level transformer LM ---------------------------------------------------------

CONTEXT = 32
VAL_WINDOWS = 128


def load_text() -> tuple[np.ndarray, np.ndarray, int]:
    """The topics of the Python documentation as byte ids (non-ASCII bytes -> one id);
    the last 10% held out. Returns ``(train ids, validation ids, vocabulary size)``."""
    from pydoc_data import topics

    text = "\n".join(topics.topics[key] for key in sorted(topics.topics))
    ids = np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(np.int32)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], 128


def make_char_transformer(seed: int, vocab: int = 128, width: int = 64, heads: int = 4,
                          layers: int = 2):
    """A GPT-style decoder: token + position embeddings, pre-LN blocks, a linear head."""
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(width, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(width, rngs=rngs)
            self.up = nnx.Linear(width, 4 * width, rngs=rngs)
            self.down = nnx.Linear(4 * width, width, rngs=rngs)

        def __call__(self, x, mask):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, mask=mask)
            return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))

    class CharLM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(vocab, width, rngs=rngs)
            self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (CONTEXT, width)))
            self.blocks = nnx.List([Block(rngs) for _ in range(layers)])
            self.ln = nnx.LayerNorm(width, rngs=rngs)
            self.head = nnx.Linear(width, vocab, rngs=rngs)

        def __call__(self, tokens):
            x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
            mask = nnx.make_causal_mask(tokens)
            for block in self.blocks:
                x = block(x, mask)
            return self.head(self.ln(x))

    return CharLM(nnx.Rngs(seed))


def charlm() -> Workload:
    from flax import nnx

    train_ids, val_ids, vocab = load_text()
    graphdef, _ = _nnx_params(make_char_transformer(0, vocab))
    batch = 16
    window = np.arange(CONTEXT + 1)
    # A fixed set of validation windows, evenly spread over the held-out text.
    starts = np.linspace(0, len(val_ids) - CONTEXT - 1, VAL_WINDOWS).astype(np.int32)
    val = jnp.asarray(val_ids[starts[:, None] + window])

    def token_loss(params, seqs):
        logits = nnx.merge(graphdef, params)(seqs[:, :-1])
        return _common.cross_entropy(logits.reshape(-1, vocab), seqs[:, 1:].reshape(-1))

    def loss(params, data, idx):
        return token_loss(params, data[idx[:, None] + jnp.asarray(window)])

    def evaluate(params, val):
        nats = token_loss(params, val)
        return nats, nats / math.log(2.0)

    def batch_indices(seed, steps):
        rng = np.random.default_rng(seed)
        return rng.integers(0, len(train_ids) - CONTEXT - 1, (steps, batch)).astype(np.int32)

    return Workload(
        name="charlm",
        title=(f"char-level transformer LM (Flax NNX, 2 blocks, width 64, context {CONTEXT}), "
               "pydoc_data topics text, batch 16"),
        init=lambda seed: _nnx_params(make_char_transformer(seed, vocab))[1],
        loss=loss,
        evaluate=evaluate,
        data=jnp.asarray(train_ids),
        val=val,
        batch_indices=batch_indices,
        metric="val. bits/char",
        higher_is_better=False,
        target=3.3,
        steps={"quick": 10, "default": 300, "full": 1500},
        eval_every={"quick": 5, "default": 50, "full": 100},
    )


#: Name -> constructor, in the order of the report.
WORKLOADS: dict[str, Callable[[], Workload]] = {
    "mnist1d": mnist1d,
    "charlm": charlm,
    "digits": digits,
    "bowl": bowl,
}
