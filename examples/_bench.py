"""The measuring part of the optimizer comparison: train, time, range-test, summarize.

One :class:`Run` is one (workload, optimizer, learning rate, seed): the same model,
initialization (per seed), minibatch order (per seed) and step budget for every
optimizer. Training is a jitted ``lax.scan`` over ``eval_every`` steps, compiled once
per (workload, optimizer) with the learning rate a traced argument (the default and
the range-test rate share the program), evaluated on the validation set between
chunks. Wall time counts the training chunks alone: compilation and evaluation are
excluded.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _workloads import Workload

import accel_jax as aj

Factory = Callable[[Any], aj.GradientTransformation]  # learning rate -> transformation


@dataclasses.dataclass
class Run:
    """The record of one training run (every array indexed by evaluation point)."""

    optimizer: str
    lr_mode: str  # "default" or "range test"
    learning_rate: float
    seed: int
    steps: list[int]  # step count at each evaluation (0 first)
    train_loss: list[float]  # mean minibatch loss of the chunk ending there (nan at 0)
    val_loss: list[float]
    metric: list[float]
    seconds: list[float]  # training wall time so far (compilation, evaluation excluded)
    steps_to_target: int | None
    seconds_to_target: float | None
    final_metric: float
    diverged: bool


def schedule_factory(factory: Factory, total_steps: int) -> Factory:
    """``factory`` with its rate turned into linear warmup (5% of the budget) + cosine decay."""

    def make(lr):
        decay = aj.cosine_decay(lr, decay_steps=total_steps - total_steps // 20, alpha=0.0)
        return factory(aj.warmup(decay, warmup_steps=max(1, total_steps // 20)))

    return make


def make_evaluate(w: Workload):
    """The jitted ``evaluate(params, val)`` of a workload, shared by every optimizer."""
    return jax.jit(w.evaluate)


class Trainer:
    """The compiled training program of one (workload, optimizer).

    ``evaluate`` comes from :func:`make_evaluate`; ``eval_params(state, params)``, if
    given, maps the training state to the params to evaluate (schedule-free methods).
    """

    def __init__(self, w: Workload, factory: Factory, evaluate, eval_params: Callable | None,
                 mode: str):
        self.w, self.factory, self.mode = w, factory, mode
        self.k = w.eval_every[mode]
        self.total = w.steps[mode]
        self._eval_params = jax.jit(eval_params) if eval_params else (lambda state, p: p)
        self._evaluate = lambda params, opt_state, val: evaluate(
            self._eval_params(opt_state, params), val)

        def chunk(params, opt_state, lr, data, idx):
            tx = factory(lr)

            def step(carry, row):
                p, s = carry
                loss, grads = jax.value_and_grad(w.loss)(p, data, row)
                updates, s = tx.update(grads, s, p)
                return (aj.apply_updates(p, updates), s), loss

            (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
            return params, opt_state, jnp.mean(losses)

        self._chunk = jax.jit(chunk)
        self._compiled: dict[tuple, Any] = {}

    def _compile(self, params, opt_state, lr, idx):
        key = idx.shape
        if key not in self._compiled:  # a program per chunk shape (budgets are multiples)
            self._compiled[key] = self._chunk.lower(params, opt_state, lr, self.w.data,
                                                    idx).compile()
        return self._compiled[key]

    def compile_in(self, executor) -> None:
        """Starts compiling the training program on ``executor`` (a thread pool), so that
        it overlaps with the range test; :meth:`run` waits for it."""
        params = self.w.init(0)
        lr = jnp.asarray(1.0, jnp.float32)
        idx = jnp.zeros((self.k, *self.w.batch_indices(0, 1).shape[1:]), jnp.int32)
        self._pending = executor.submit(self._compile, params, self.factory(lr).init(params),
                                        lr, idx)

    def run(self, name: str, lr_mode: str, learning_rate: float, seed: int,
            on_chunk: Callable[[int], None] = lambda n: None) -> Run:
        w = self.w
        if getattr(self, "_pending", None) is not None:
            self._pending.result()
            self._pending = None
        params = w.init(seed)
        lr = jnp.asarray(learning_rate, jnp.float32)
        opt_state = self.factory(lr).init(params)
        rows = jnp.asarray(w.batch_indices(seed, self.total))
        val_loss, metric = self._evaluate(params, opt_state, w.val)
        rec = dict(steps=[0], train_loss=[math.nan], val_loss=[float(val_loss)],
                   metric=[float(metric)], seconds=[0.0])
        elapsed, done, diverged = 0.0, 0, False
        while done < self.total:
            idx = rows[done : done + self.k]
            program = self._compile(params, opt_state, lr, idx)
            start = time.perf_counter()
            params, opt_state, train_loss = jax.block_until_ready(
                program(params, opt_state, lr, w.data, idx))
            elapsed += time.perf_counter() - start
            done += idx.shape[0]
            val_loss, metric = self._evaluate(params, opt_state, w.val)
            for key, value in (("steps", done), ("train_loss", float(train_loss)),
                               ("val_loss", float(val_loss)), ("metric", float(metric)),
                               ("seconds", elapsed)):
                rec[key].append(value)
            on_chunk(idx.shape[0])
            if not (math.isfinite(float(val_loss)) and math.isfinite(float(train_loss))):
                diverged = True  # the rest of the budget would only carry NaNs
                on_chunk(self.total - done)
                break
        hit = next((i for i, m in enumerate(rec["metric"]) if w.reached(m)), None)
        return Run(
            optimizer=name, lr_mode=lr_mode, learning_rate=float(learning_rate), seed=seed,
            steps_to_target=None if hit is None else rec["steps"][hit],
            seconds_to_target=None if hit is None else rec["seconds"][hit],
            final_metric=rec["metric"][-1] if not diverged else math.nan,
            diverged=diverged, **rec,
        )


def range_test(w: Workload, factory: Factory, num_steps: int) -> aj.LRFinderResult:
    """:func:`accel_jax.find_learning_rate` from seed 0's init on seed 0's minibatches,
    the rate growing from 1e-5 to 10."""
    rows = jnp.asarray(w.batch_indices(0, num_steps))
    batches = [(w.data, rows[i]) for i in range(num_steps)]
    return aj.find_learning_rate(
        lambda p, batch: w.loss(p, *batch), w.init(0), factory, batches,
        min_lr=1e-5, max_lr=10.0, num_steps=num_steps,
    )


# --- statistics over seeds -------------------------------------------------------------


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (0 for one value) of the finite values; nan if none."""
    xs = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if xs.size == 0:
        return math.nan, math.nan
    return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0


@dataclasses.dataclass
class Summary:
    """One (optimizer, lr mode) over its seeds."""

    optimizer: str
    lr_mode: str
    learning_rate: float
    seeds: int
    reached: int  # seeds that reached the target
    steps_to_target: tuple[float, float]  # mean, spread over the seeds that reached it
    seconds_to_target: tuple[float, float]
    final_metric: tuple[float, float]
    diverged: int
    speed: str = ""
    quality: str = ""


def summarize(runs: list[Run]) -> Summary:
    first = runs[0]
    reached = [r for r in runs if r.steps_to_target is not None]
    return Summary(
        optimizer=first.optimizer, lr_mode=first.lr_mode, learning_rate=first.learning_rate,
        seeds=len(runs), reached=len(reached),
        steps_to_target=mean_spread([r.steps_to_target for r in reached]),
        seconds_to_target=mean_spread([r.seconds_to_target for r in reached]),
        final_metric=mean_spread([r.final_metric for r in runs]),
        diverged=sum(r.diverged for r in runs),
    )


def quality_gap(w: Workload, best: float, value: float) -> float:
    """How far ``value`` is behind ``best``, in the units of :func:`assign_stars`' bands:
    percentage points of accuracy, bits per character, or decades of the bowl's loss."""
    if not math.isfinite(value):
        return math.inf
    if w.log_scale:
        return math.log10(max(value, w.floor, 1e-30)) - math.log10(max(best, w.floor, 1e-30))
    return (best - value) * 100 if w.higher_is_better else value - best


#: (three-star band, two-star band) of :func:`quality_gap` per metric.
QUALITY_BANDS = {"val. accuracy": (1.0, 3.0), "val. bits/char": (0.05, 0.15), "loss": (1.0, 3.0)}


def assign_stars(w: Workload, summaries: list[Summary]) -> None:
    """Speed and quality stars, among the summaries given (one lr mode of one workload).

    Speed, from the mean steps to target ``s`` against the fastest optimizer's
    ``s_min``: *** if ``s <= 2 s_min``, ** if ``s <= 4 s_min``, * if slower or if a
    seed missed the target. Quality, from the mean final metric's gap to the best
    one (:func:`quality_gap`, :data:`QUALITY_BANDS`): *** within the first band,
    ** within the second, * beyond.
    """
    full = [s for s in summaries if s.reached == s.seeds]
    fastest = min((s.steps_to_target[0] for s in full), default=math.nan)
    finals = [s.final_metric[0] for s in summaries if math.isfinite(s.final_metric[0])]
    best = (max if w.higher_is_better else min)(finals) if finals else math.nan
    three, two = QUALITY_BANDS[w.metric]
    for s in summaries:
        if s.reached < s.seeds:
            s.speed = "*"
        else:
            ratio = s.steps_to_target[0] / fastest
            s.speed = "***" if ratio <= 2 else "**" if ratio <= 4 else "*"
        gap = quality_gap(w, best, s.final_metric[0])
        s.quality = "***" if gap <= three else "**" if gap <= two else "*"
