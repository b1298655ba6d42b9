"""Every example runs (in its quick mode) and shows what it claims.

The examples are imported and their ``main(argv)`` called in this process, with
the 8 simulated CPU devices and the strict dtype promotion of ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.slow


def load(name: str):
    """Imports ``examples/<name>.py`` as a module (each example puts examples/ on sys.path)."""
    module_name = f"examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses (Flax Linen modules) look themselves up
    spec.loader.exec_module(module)
    return module


def test_every_example_is_run_by_a_test():
    tests = [p.read_text() for p in pathlib.Path(__file__).parent.glob("test_*.py")]
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
    untested = [s for s in scripts if not any(f'"{s}' in text for text in tests)]
    assert not untested, f"examples that no test runs: {untested}"


def _quick_compare(tmp_path, *args):
    co = load("compare_optimizers")
    return co, co.main(["--quick", "--out", str(tmp_path), "--no-progress", *args])


def test_compare_optimizers(tmp_path, capsys):
    """Both rates, every run recorded, the tables, the JSON and the plots written."""
    co, results = _quick_compare(tmp_path, "--workloads", "digits", "bowl",
                                 "--optimizers", "SGD", "Adam", "SF-SGD")
    out = capsys.readouterr().out
    for name, w in results["workloads"].items():
        assert [(s["optimizer"], s["lr_mode"]) for s in w["summaries"]] == [
            (n, m) for m in co.LR_MODES for n in ("SGD", "Adam", "SF-SGD")]
        for r in w["runs"]:
            assert r["steps"] == list(range(0, w["steps"] + 1, w["eval_every"])), name
            assert np.all(np.isfinite(r["metric"])), (name, r["optimizer"])
            assert r["seconds"][-1] > 0
        for n, rt in w["range_tests"].items():
            default = co.OPTIMIZERS[n].default_lr
            assert np.isfinite(rt["suggested_lr"]) and rt["suggested_lr"] != default
            assert [r["learning_rate"] for r in w["runs"] if r["optimizer"] == n] == [
                default, rt["suggested_lr"]]
        assert w["seeds"] == [0]
    digits = results["workloads"]["digits"]
    assert all(r["metric"][-1] > r["metric"][0] for r in digits["runs"]
               if r["lr_mode"] == "range test")  # accuracy up from chance
    bowl = results["workloads"]["bowl"]
    assert all(r["metric"][-1] < r["metric"][0] for r in bowl["runs"])
    table = (tmp_path / "comparison.md").read_text()
    assert table.strip() in out
    assert "**digits**" in table and "**bowl**" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(s["optimizer"], s["speed"], s["quality"], s["final_metric"][0])
            for s in saved["workloads"]["bowl"]["summaries"]] == [
        (s["optimizer"], s["speed"], s["quality"], s["final_metric"][0])
        for s in bowl["summaries"]]
    for png in ("curves_digits.png", "curves_bowl.png", "steps_to_target.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png


def test_compare_optimizers_heavy_workloads(tmp_path):
    """The MNIST-1D CNN and the character-level transformer train (Muon: the matrices)."""
    _, results = _quick_compare(tmp_path, "--workloads", "mnist1d", "charlm",
                                "--optimizers", "Muon")
    for name, w in results["workloads"].items():
        run = [r for r in w["runs"] if r["lr_mode"] == "default"][0]
        better = (np.greater if w["higher_is_better"] else np.less)
        assert better(run["metric"][-1], run["metric"][0]), name
    assert results["workloads"]["charlm"]["metric"] == "val. bits/char"


def test_compare_optimizers_default_run_covers_every_exported_optimizer():
    co = load("compare_optimizers")
    assert co.exported_optimizers() == list(co.OPTIMIZERS)  # every one lands in the table
    exported = {n for n in aj.__all__ if callable(getattr(aj, n))}
    named = {spec.function for spec in co.OPTIMIZERS.values()}
    missing = {"radam", "nadamw", "adadelta", "lion", "muon", "adafactor", "lamb", "lars",
               "schedule_free_adamw", "schedule_free_sgd"} & exported - named
    assert not missing


def _summary(name, steps, final, seeds=1, reached=None):
    bench = load("compare_optimizers")._bench
    reached = seeds if reached is None else reached
    return bench.Summary(name, "default", 0.1, seeds, reached, (steps, 0.0), (1.0, 0.0),
                         (final, 0.0), 0)


def test_compare_optimizers_stars_rule():
    co = load("compare_optimizers")
    workload = type("W", (), {"metric": "val. accuracy", "higher_is_better": True,
                              "log_scale": False})()
    group = [
        _summary("Adam", 100, 0.97),  # fastest
        _summary("SGD", 450, 0.965),  # > 4x: one star; 0.5 point behind: three
        _summary("Momentum", 200, 0.95),  # 2x: three stars; 2 points behind: two
        _summary("AdaGrad", 0, 0.90, reached=0),  # missed; 7 points behind
        _summary("Nadam", 300, 0.97, seeds=3, reached=3),  # 3x: two stars
    ]
    co._bench.assign_stars(workload, group)
    assert [(s.speed, s.quality) for s in group] == [
        ("***", "***"), ("*", "***"), ("***", "**"), ("*", "*"), ("**", "***")]


def test_compare_optimizers_verdicts():
    co = load("compare_optimizers")
    names = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "AdaMax", "Nadam",
             "AdamW"]
    steps = dict(zip(names, [900, 300, 250, 0, 100, 100, 120, 90, 100], strict=True))
    finals = dict(zip(names, [0.95, 0.96, 0.97, 0.80, 0.96, 0.96, 0.96, 0.96, 0.96],
                      strict=True))
    workload = type("W", (), {"metric": "val. accuracy", "higher_is_better": True,
                              "log_scale": False})()
    group = [_summary(n, steps[n], finals[n], reached=0 if n == "AdaGrad" else 1)
             for n in names]
    co._bench.assign_stars(workload, group)
    summaries = [dataclasses.asdict(s) for s in group]
    summaries += [{**s, "lr_mode": "range test"} for s in summaries]
    results = {"workloads": {"toy": {"metric": "val. accuracy", "higher_is_better": True,
                                     "summaries": summaries}}}
    verdicts = {v["claim"]: v for v in co._report.verdicts(results)}
    assert [v["verdict"] for v in verdicts.values()] == [
        "holds", "holds", "holds", "holds", "holds", "holds"]
    assert verdicts["SGD converges slowly (speed *)"]["decided"] == 2


def test_compare_optimizers_schedule_is_warmup_then_cosine():
    co = load("compare_optimizers")
    tx = co._bench.schedule_factory(lambda lr: aj.sgd(lr), 100)(0.1)
    params = {"w": jnp.ones(2)}
    state, used = tx.init(params), []
    for _ in range(100):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        used.append(float(aj.get_hyperparams(state)["learning_rate"]))
    warm = [0.1 * k / 5 for k in range(5)]  # 5% of the budget, linear from 0
    cosine = [0.05 * (1 + np.cos(np.pi * k / 95)) for k in range(95)]
    np.testing.assert_allclose(used, warm + cosine, rtol=1e-5, atol=1e-7)


def test_readme_shows_the_committed_comparison():
    """The README's comparison is generated from docs/compare/results.json, never typed."""
    co = load("compare_optimizers")
    root = EXAMPLES.parent
    results = json.loads((root / "docs" / "compare" / "results.json").read_text())
    fragment = co._report.readme_fragment(results, co.SEEDS_STARS)
    assert fragment.strip() in (root / "README.md").read_text()
    full = co._report.markdown(results, co.SEEDS_STARS)
    assert (root / "docs" / "compare" / "comparison.md").read_text() == full
    full_run = json.loads((root / "docs" / "compare" / "full_results.json").read_text())
    assert full_run["protocol"]["mode"] == "full" and full_run["protocol"]["seeds"] == [0, 1, 2]
    assert (root / "docs" / "compare" / "full_comparison.md").read_text() == (
        co._report.markdown(full_run, co.SEEDS_STARS))


def test_elongated_bowl_adagrad_stops_short(tmp_path):
    eb = load("elongated_bowl")
    paths = eb.main(["--out", str(tmp_path)])  # the full run: 100 steps of 2-D problems
    start = eb.loss(np.asarray(eb.START, np.float32))
    distance = {name: float(np.linalg.norm(p[-1])) for name, p in paths.items()}
    for name, p in paths.items():
        assert p.shape == (101, 2) and np.all(np.isfinite(p)), name
        assert eb.loss(p[-1]) < start, name
    # The picture's point: AdaGrad (same learning rate as RMSProp and Adam) is the only
    # one left far from the optimum, with steps that have all but stopped.
    assert distance["AdaGrad"] > 1.0
    assert all(d < 0.1 for name, d in distance.items() if name != "AdaGrad"), distance
    last_step = np.linalg.norm(paths["AdaGrad"][-1] - paths["AdaGrad"][-2])
    assert last_step < 0.05 * distance["AdaGrad"]
    assert (tmp_path / "elongated_bowl.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["flax_nnx", "flax_linen", "dm_haiku"])
def test_framework_examples_train(name, tmp_path):
    out = load(name).main(["--quick", "--out", str(tmp_path)])
    losses = out["losses"]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert out["val_accuracy"] > 0.5


def test_flax_linen_changes_one_group_learning_rate(tmp_path):
    out = load("flax_linen").main(["--quick", "--out", str(tmp_path)])
    assert out["learning_rates"]["body"] == pytest.approx(0.005)
    assert out["learning_rates"]["head"] == pytest.approx(0.001)


def test_data_parallel_matches_one_device(tmp_path):
    assert jax.local_device_count() == 8
    out = load("data_parallel").main(["--quick", "--out", str(tmp_path)])
    assert out["devices"] == 8
    assert out["replicas_agree"]  # bit-identical replicas: the same update everywhere
    # Not bit-identical to one device: the batch mean is summed in another order.
    assert out["max_relative_difference"] < 1e-5
    for a, b in zip(
        jax.tree.leaves(out["params"]), jax.tree.leaves(out["single_device_params"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["losses"], out["single_device_losses"], rtol=1e-5)


def test_sharded_matches_one_device(tmp_path):
    from jax.sharding import PartitionSpec as P

    out = load("sharded").main(["--quick", "--out", str(tmp_path)])
    assert out["devices"] == 8
    for layout in ("model_parallel_params", "zero1_params"):
        for a, b in zip(
            jax.tree.leaves(out[layout]), jax.tree.leaves(out["single_device_params"]),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # Data + model parallel: each moment is split like its parameter.
    adam_state = out["model_parallel_state"][0]
    assert adam_state.mu["layer_0"]["w"].sharding.spec == P(None, "model")
    assert adam_state.nu["layer_1"]["w"].sharding.spec == P("model", None)
    # ZeRO-1: params replicated, moments split over the 8 data-parallel devices.
    assert out["zero1_params"]["layer_0"]["w"].sharding.spec == P()
    assert out["zero1_state"][0].mu["layer_0"]["w"].sharding.spec == P("data")
    assert out["zero1_state_bytes"] < out["single_device_state_bytes"] / 4


def test_multi_process_matches_one_process(tmp_path):
    # 2 processes x 4 devices (jax.distributed) vs 1 x 8, batch split: float32 rounding.
    # The checkpoint round trip across process counts is tests/test_multi_process.py.
    out = load("multi_process").main(["--quick", "--out", str(tmp_path)])
    two, one = out["runs"]["two_process"], out["runs"]["one_process"]
    assert (two[1]["processes"], two[1]["devices"], one[1]["processes"]) == (2, 8, 1)
    assert two[1]["mu_spec"] == "P('data',)"
    assert out["max_abs_difference"] < 1e-5
    for key in two[0]:
        np.testing.assert_allclose(two[0][key], one[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(two[1]["losses"], one[1]["losses"], rtol=1e-6)


def test_checkpointing_resume_is_bit_identical(tmp_path):
    out = load("checkpointing").main(["--quick", "--out", str(tmp_path)])
    assert out["identical"]
    for a, b in zip(
        jax.tree.leaves((out["params"], out["opt_state"])),
        jax.tree.leaves((out["reference_params"], out["reference_opt_state"])),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert 0 < out["resumed_at"] < 16
    assert out["learning_rate"] == pytest.approx(1e-3)  # halved before the save, restored
    assert (tmp_path / "checkpoints").is_dir()


def test_schedule_free_eval_and_checkpoint(tmp_path):
    out = load("schedule_free").main(["--quick", "--out", str(tmp_path)])
    assert out["identical"]  # resumed from (params, state): bit-identical
    assert out["drift_from_x_only"] > 1e-3  # resumed from x alone: not the same run
    assert out["y_recovered"] < 1e-5  # y = b1 x + (1 - b1) z
    assert np.isfinite(out["loss_x"]) and out["loss_x"] < 2.0  # below chance (log 10 = 2.3)
    x, y = jax.tree.leaves(out["eval_params"]), jax.tree.leaves(out["params"])
    assert not all(np.allclose(a, b) for a, b in zip(x, y, strict=True))
    assert (tmp_path / "sf_checkpoints").is_dir()


def test_packed_state_follows_the_tree_run(tmp_path):
    out = load("packed_state").main(["--quick", "--out", str(tmp_path)])
    packed, tree = out["aj.pack_state(aj.adamw)"], out["aj.adamw"]
    assert out["max_relative_difference"] < 1e-5  # same values per parameter
    assert packed["state_buffers"] < 10 < tree["state_buffers"]  # one buffer per dtype
    assert packed["losses"][-1] < packed["losses"][0]
    assert packed["losses"] == pytest.approx(tree["losses"], rel=1e-5)
