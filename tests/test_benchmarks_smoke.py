"""The benchmark runs (tiny sizes, no timing assertions)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_time_quick_runs(tmp_path):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py"), "--quick",
            "--trees", "C", "--optimizers", "adam", "--repeats", "2",
            "--compile-leaves", "10", "--no-torch", "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "vs optax" in proc.stdout and "triad" in proc.stdout
    results = json.loads(out.read_text())
    impls = {r["implementation"] for r in results["steps"]}
    assert {"optax", "accel_jax", "accel_jax xla", "accel_jax flat", "accel_jax 8-bit"} <= impls
    assert {"flax TrainState", "aj.flax.TrainState", "nnx.Optimizer", "aj.flax.Optimizer",
            "accel_jax 8-bit xla"} <= impls
    assert results["dispatch_floor"][0]["tree"] == "C"
    assert results["compile"][0]["leaves"] == 10
    assert set(results["quality"]) == {"float32", "bfloat16 moments", "8-bit block-wise"}
