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
            "--compile-leaves", "10", "--compile-rss", "--train-share", "3", "--no-torch",
            "--json", str(out),
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
    assert {"accel_jax packed", "accel_jax packed xla"} <= impls
    assert results["dispatch_floor"][0]["tree"] == "C"
    assert results["dispatch_floor_packed"][0]["tree"] == "C"
    assert results["compile"][0]["leaves"] == 10
    assert results["compile"][0]["accel_jax packed child"]["rss_mb"] >= 0
    share = results["train_share"]
    assert share["leaves"] == 3 and "share_s" in share["accel_jax packed"]
    assert set(results["quality"]) == {"float32", "bfloat16 moments", "8-bit block-wise"}


def test_kernel_bandwidth_quick_runs(tmp_path):
    out = tmp_path / "bandwidth.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: kernels on
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "kernel_bandwidth.py"), "--quick",
         "--repeats", "1", "--no-torch", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| optimizer | implementation | median ms |" in proc.stdout
    results = json.loads(out.read_text())
    assert results["size"] == 1 << 20
    rows = {(r["optimizer"], r["implementation"]): r for r in results["rows"]}
    opts = ("adam", "adamw", "adam_bf16", "adam_8bit", "sgd_momentum", "sgd_nesterov", "rmsprop")
    assert set(rows) == {(o, i) for o in opts for i in ("accel_jax kernel", "accel_jax xla")}
    assert rows["adam", "accel_jax kernel"]["bytes_per_param"] == 28
    assert rows["rmsprop", "accel_jax xla"]["bytes_per_param"] == 20
    native = results["machine"]["native"].startswith("built")
    assert all(rows[o, "accel_jax kernel"]["uses_kernel"] == native for o in opts)
    assert not any(rows[o, "accel_jax xla"]["uses_kernel"] for o in opts)
    streams = {"stream: XLA a = a + s*b", "stream: numpy (1 thread)"}
    assert set(results["streams"]["adam"]) == streams
