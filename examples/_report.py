"""The reporting part of the optimizer comparison: Markdown tables, verdicts, plots.

Everything here reads the JSON-ready ``results`` dict that
``examples/compare_optimizers.py`` writes to ``results.json``, so the README's
tables can be regenerated from the committed JSON (``tests/test_examples.py``
checks that they are).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

# --- numbers -> text -------------------------------------------------------------------


def _fmt_metric(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    if metric == "val. accuracy":
        return f"{100 * value:.1f}%"
    if metric == "loss":
        return f"{value:.1e}"
    return f"{value:.3f}"


def _pm(mean: float, spread: float, fmt: str, seeds: int) -> str:
    if not math.isfinite(mean):
        return "-"
    text = format(mean, fmt)
    return f"{text} ± {format(spread, fmt)}" if seeds > 1 else text


def _steps(s: dict, budget: int) -> str:
    if s["reached"] == 0:
        return f"> {budget}"
    text = _pm(*s["steps_to_target"], ".0f", s["reached"])
    return text if s["reached"] == s["seeds"] else f"{text} ({s['reached']}/{s['seeds']})"


def _target(w: dict) -> str:
    sign = ">=" if w["higher_is_better"] else "<="
    return f"{w['metric']} {sign} {_fmt_metric(w['target'], w['metric'])}"


def workload_table(name: str, w: dict, calls: dict, seeds_stars: dict) -> str:
    """One workload: a row per (optimizer, learning rate)."""
    n = len(w["seeds"])
    lines = [
        f"**{name}**: {w['title']}; {w['steps']} steps, evaluated every {w['eval_every']}; "
        f"target {_target(w)}; seeds {', '.join(map(str, w['seeds']))}.",
        "",
        f"| optimizer | lr | steps to target | time to target (s) | final {w['metric']} "
        "| speed | quality | seeds' table |",
        "|---|---|---:|---:|---:|:---:|:---:|:---:|",
    ]
    for s in w["summaries"]:
        stars = seeds_stars.get(s["optimizer"])
        lr = f"{s['learning_rate']:.3g} ({s['lr_mode']})"
        final = _fmt_metric(s["final_metric"][0], w["metric"])
        if n > 1 and math.isfinite(s["final_metric"][0]):
            spread = s["final_metric"][1] * (100 if w["metric"] == "val. accuracy" else 1)
            final += f" ± {spread:.2g}"
        lines.append(
            f"| {s['optimizer']} | {lr} | {_steps(s, w['steps'])} "
            f"| {_pm(*s['seconds_to_target'], '.2f', s['reached'])} | {final} "
            f"| {s['speed']} | {s['quality']} | {' / '.join(stars) if stars else ''} |"
        )
    del calls
    return "\n".join(lines)


def summary_table(results: dict, seeds_stars: dict) -> str:
    """Speed / quality stars of every optimizer on every workload, at both rates."""
    wl = results["workloads"]
    names = list(results["protocol"]["optimizers"])
    head = " | ".join(f"{k} (default · range test)" for k in wl)
    lines = [f"| optimizer | call at the default rate | {head} | seeds' table |",
             "|---|---|" + ":---:|" * len(wl) + ":---:|"]
    for n in names:
        cells = []
        for w in wl.values():
            by_mode = {s["lr_mode"]: s for s in w["summaries"] if s["optimizer"] == n}
            cells.append(" · ".join(f"{by_mode[m]['speed']}/{by_mode[m]['quality']}"
                                    for m in ("default", "range test") if m in by_mode))
        stars = seeds_stars.get(n)
        call = results["protocol"]["optimizers"][n]
        lines.append(f"| {n} | `{call['call']}` ({call['lr_source']}) | {' | '.join(cells)} "
                     f"| {' / '.join(stars) if stars else ''} |")
    return "\n".join(lines)


# --- the seeds' claims -----------------------------------------------------------------

ADAPTIVE = ("RMSProp", "Adam", "AdaMax", "Nadam", "AdamW")


def _steps_or_inf(s: dict) -> float:
    return s["steps_to_target"][0] if s["reached"] == s["seeds"] else math.inf


def _better(w: dict, a: float, b: float) -> bool:
    """Is final metric ``a`` strictly better than ``b``?"""
    a = a if math.isfinite(a) else (-math.inf if w["higher_is_better"] else math.inf)
    b = b if math.isfinite(b) else (-math.inf if w["higher_is_better"] else math.inf)
    return a > b if w["higher_is_better"] else a < b


def _claim_sgd_slow(w, s):
    return s["SGD"]["speed"] == "*"


def _claim_momentum_faster(w, s):
    sgd = _steps_or_inf(s["SGD"])
    mom, nag = _steps_or_inf(s["Momentum"]), _steps_or_inf(s["Nesterov"])
    if math.isinf(sgd) and math.isinf(mom) and math.isinf(nag):
        return None  # nobody reached the target: undecided
    return mom < sgd and nag < sgd


def _claim_nadam(w, s):
    adam, nadam = _steps_or_inf(s["Adam"]), _steps_or_inf(s["Nadam"])
    return None if math.isinf(adam) and math.isinf(nadam) else nadam <= adam


def _claim_adagrad(w, s):
    rank = {"*": 1, "**": 2, "***": 3}
    best = max(rank[s[n]["quality"]] for n in ("RMSProp", "Adam"))
    return rank[s["AdaGrad"]["quality"]] < best


def _claim_adaptive_fast(w, s):
    return sum(s[n]["speed"] == "***" for n in ADAPTIVE) >= 4


def _claim_adaptive_generalize(w, s):
    if w["metric"] == "loss":
        return None  # no held-out data: nothing to generalize to
    best_sgd = max((s[n]["final_metric"][0] for n in ("Momentum", "Nesterov")),
                   key=lambda v: v if w["higher_is_better"] else -v)
    return all(_better(w, best_sgd, s[n]["final_metric"][0]) for n in ADAPTIVE)


#: (claim as the seeds state it, the optimizers it needs, the test on one workload+rate).
CLAIMS = [
    ("SGD converges slowly (speed *)", ("SGD",), _claim_sgd_slow),
    ("Momentum and Nesterov converge faster than SGD", ("SGD", "Momentum", "Nesterov"),
     _claim_momentum_faster),
    ("Nadam often converges slightly faster than Adam", ("Adam", "Nadam"), _claim_nadam),
    ("AdaGrad stops too early (worse quality than RMSProp / Adam)", ("AdaGrad", "RMSProp",
     "Adam"), _claim_adagrad),
    ("Adaptive methods converge fast (speed ***, 4 of the 5)", ADAPTIVE, _claim_adaptive_fast),
    ("Adaptive methods generalize worse than SGD with momentum / NAG",
     ADAPTIVE + ("Momentum", "Nesterov"), _claim_adaptive_generalize),
]


def verdicts(results: dict) -> list[dict]:
    """Each claim tested on each workload at both rates: holds where it holds in more
    than half of the decided cases."""
    out = []
    for claim, needs, test in CLAIMS:
        cells: dict[str, dict[str, Any]] = {}
        for wname, w in results["workloads"].items():
            for mode in ("default", "range test"):
                s = {x["optimizer"]: x for x in w["summaries"] if x["lr_mode"] == mode}
                if all(n in s for n in needs):
                    cells.setdefault(wname, {})[mode] = test(w, s)
        decided = [v for c in cells.values() for v in c.values() if v is not None]
        held = sum(decided)
        verdict = ("not tested" if not decided else
                   "holds" if held > len(decided) / 2 else "does not hold here")
        out.append({"claim": claim, "cells": cells, "held": held, "decided": len(decided),
                    "verdict": verdict})
    return out


def verdict_table(results: dict) -> str:
    wl = list(results["workloads"])
    mark = {True: "yes", False: "no", None: "n/a"}
    lines = [f"| seeds' claim | {' | '.join(wl)} | verdict |",
             "|---|" + ":---:|" * len(wl) + "---|"]
    for v in results["verdicts"]:
        cells = [" · ".join(mark[v["cells"][k][m]] for m in ("default", "range test")
                            if m in v["cells"].get(k, {})) or "-" for k in wl]
        lines.append(f"| {v['claim']} | {' | '.join(cells)} | **{v['verdict']}** "
                     f"({v['held']} of {v['decided']}) |")
    return "\n".join(lines)


def _head(results: dict) -> str:
    p = results["protocol"]
    rt = p["range_test"]
    head = (
        f"Mode `{p['mode']}`, seeds {', '.join(map(str, p['seeds']))}"
        f"{', warmup + cosine schedule' if p['schedule'] else ', constant learning rate'}; "
        f"JAX {p['jax']} on {p['device']}; {results['seconds']:.0f} s "
        f"({results['cpu_seconds']:.0f} s of CPU). Each optimizer at its framework's default "
        f"rate and at the range test's suggestion ({rt['steps']} steps from {rt['min_lr']:g} to "
        f"{rt['max_lr']:g}, a tenth of the rate at the smoothed loss' minimum). Speed: *** "
        "within 2x the fastest one's steps to target, ** within 4x, * slower or missed; "
        "quality: final metric within 1 point of the best (0.05 bits/char, 1 decade of "
        "the bowl's loss, 1e-6 and below equal) ***, 3 points (0.15, 3 decades) **, else *; "
        "among all optimizers "
        "at the same kind of rate. Cells read speed/quality."
    )
    return head


def readme_fragment(results: dict, seeds_stars: dict) -> str:
    """What the README shows: the protocol line, the summary and the verdicts."""
    return "\n".join([_head(results), "", summary_table(results, seeds_stars), "",
                      verdict_table(results)]) + "\n"


def markdown(results: dict, seeds_stars: dict) -> str:
    """Everything: the summary, the verdicts and a table per workload."""
    p = results["protocol"]
    parts = [_head(results), "", summary_table(results, seeds_stars), "",
             "What the seeds' claims become here (per workload: at the default rate · at the "
             "range test's rate):", "", verdict_table(results)]
    for name, w in results["workloads"].items():
        parts += ["", workload_table(name, w, p["optimizers"], seeds_stars)]
    return "\n".join(parts) + "\n"


# --- plots -----------------------------------------------------------------------------

_FAMILY_STYLE = {"sgd": "-", "adaptive": "--", "frontier": "-."}
_MARKERS = "os^vD<>pPX*hH+x1234"


def _styles(results: dict) -> dict[str, dict]:
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    out = {}
    for i, (n, spec) in enumerate(results["protocol"]["optimizers"].items()):
        out[n] = dict(color=colors[i % len(colors)], ls=_FAMILY_STYLE[spec["family"]],
                      marker=_MARKERS[i % len(_MARKERS)], markevery=0.2, ms=4, lw=1.4)
    return out


def plots(results: dict, out: str) -> list[str]:
    """``curves_<workload>.png`` (validation metric, mean and min-max band over seeds,
    one panel per rate) and ``steps_to_target.png``. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = _styles(results)
    paths = []
    for name, w in results["workloads"].items():
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        for ax, mode in zip(axes, ("default", "range test"), strict=True):
            for n in results["protocol"]["optimizers"]:
                runs = [r for r in w["runs"] if r["optimizer"] == n and r["lr_mode"] == mode]
                if not runs:
                    continue
                length = min(len(r["metric"]) for r in runs)
                m = np.array([r["metric"][:length] for r in runs], float)
                steps = runs[0]["steps"][:length]
                ax.plot(steps, m.mean(axis=0), label=n, **style[n])
                if len(runs) > 1:
                    ax.fill_between(steps, m.min(axis=0), m.max(axis=0),
                                    color=style[n]["color"], alpha=0.15, lw=0)
            ax.axhline(w["target"], color="k", lw=0.8, ls=":")
            ax.set_title(f"{'framework default' if mode == 'default' else 'range-test'} "
                         "learning rate")
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
            if w["log_scale"]:
                ax.set_yscale("log")
        if w["metric"] == "val. accuracy":
            axes[0].set_ylim(0, 1)
        elif not w["log_scale"]:  # bits/char: the first steps' drop would flatten the rest
            axes[0].set_ylim(top=w["target"] + 2.0)
        axes[0].set_ylabel(f"{w['metric']} (dotted: target)")
        axes[1].legend(fontsize=7, ncol=2, loc="best")
        fig.suptitle(w["title"], fontsize=10)
        fig.tight_layout()
        path = os.path.join(out, f"curves_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths.append(_bars(results, out, style))
    return paths


def _bars(results: dict, out: str, style: dict) -> str:
    import matplotlib.pyplot as plt

    wl = results["workloads"]
    names = list(results["protocol"]["optimizers"])
    fig, axes = plt.subplots(len(wl), 1, figsize=(12, 2.6 * len(wl) + 0.6), squeeze=False)
    x = np.arange(len(names))
    for ax, (wname, w) in zip(axes[:, 0], wl.items(), strict=True):
        for j, (mode, hatch) in enumerate((("default", ""), ("range test", "//"))):
            s = {v["optimizer"]: v for v in w["summaries"] if v["lr_mode"] == mode}
            heights, errs, missed = [], [], []
            for n in names:
                full = n in s and s[n]["reached"] == s[n]["seeds"]
                heights.append(s[n]["steps_to_target"][0] if full else w["steps"])
                errs.append(s[n]["steps_to_target"][1] if full else 0.0)
                missed.append(not full)
            bars = ax.bar(x + (j - 0.5) * 0.4, heights, 0.4,
                          yerr=errs if any(errs) else None, capsize=2,
                          color=[style[n]["color"] for n in names], hatch=hatch,
                          edgecolor="k", lw=0.5, label=f"{mode} rate")
            for bar, miss in zip(bars, missed, strict=True):
                if miss:
                    bar.set_alpha(0.25)
        ax.set_ylabel("steps")
        ax.set_title(f"{wname}: steps to {_target(w)} (faint: not reached in {w['steps']})",
                     fontsize=9)
        ax.set_xticks(x, names, fontsize=8, rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "steps_to_target.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
