"""Every example runs (in its quick mode) and shows what it claims.

The examples are imported and their ``main(argv)`` called in this process, with
the 8 simulated CPU devices and the strict dtype promotion of ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

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


def test_compare_optimizers(tmp_path, capsys):
    co = load("compare_optimizers")
    results = co.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert [r.name for r in results] == list(co.OPTIMIZERS)
    for r in results:
        assert np.all(np.isfinite(r.train_loss)), r.name
        assert r.train_loss[-1] < r.train_loss[0], f"{r.name} did not lower the training loss"
        assert 0.0 <= r.val_accuracy <= 1.0
    table = (tmp_path / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == len(co.OPTIMIZERS)
    assert table.strip() in capsys.readouterr().out
    assert (tmp_path / "compare_optimizers.png").stat().st_size > 10_000


def test_compare_optimizers_with_the_range_test(tmp_path):
    """--lr-range-test trains each optimizer at the rate find_learning_rate suggests."""
    co = load("compare_optimizers")
    results = co.main(["--quick", "--out", str(tmp_path), "--no-progress", "--lr-range-test",
                       "--only", "SGD", "Adam"])
    defaults = {name: lr for name, (_, _, lr) in co.OPTIMIZERS.items()}
    for r in results:
        assert np.isfinite(r.learning_rate) and r.learning_rate > 0
        assert r.learning_rate != defaults[r.name]  # the suggestion, not the default
        assert np.all(np.isfinite(r.train_loss)), r.name
    assert "range test" in (tmp_path / "comparison.md").read_text()


def test_compare_optimizers_stars_rule():
    co = load("compare_optimizers")

    def result(name, losses, acc):
        return co.Result(name, 0.1, np.array(losses), acc, 0.0)

    results = [
        result("Adam", [2.0, 0.04, 0.01], 0.97),  # reaches 0.05 at epoch 1: fastest
        result("SGD", [2.0, 1.0, 0.5, 0.2, 0.1, 0.04], 0.965),  # epoch 5 > 4x: one star
        result("Momentum", [2.0, 0.5, 0.04], 0.95),  # epoch 2 <= 2x; 2 points below best
        result("AdaGrad", [2.0, 1.5, 1.2], 0.90),  # never; 7 points below best
    ]
    assert co.stars(results, 0.05) == {
        "Adam": ("***", "***"),
        "SGD": ("*", "***"),
        "Momentum": ("***", "**"),
        "AdaGrad": ("*", "*"),
    }
    assert co.epochs_to_target(results[1], 0.05) == 5
    assert co.epochs_to_target(results[3], 0.05) is None


def test_compare_optimizers_rejects_a_bad_learning_rate_override():
    co = load("compare_optimizers")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        co._learning_rates(["Adamm=0.1"])
    assert co._learning_rates(["AdaGrad=0.05"])["AdaGrad"] == 0.05


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
