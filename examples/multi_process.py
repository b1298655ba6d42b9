"""Multi-process training on JAX's own runtime: ZeRO-1 state over 2 processes x 4 CPU devices.

One command starts everything on this machine::

    python examples/multi_process.py [--quick]

It launches worker processes (this same file with ``--worker``) that join one JAX
runtime with ``jax.distributed.initialize`` (a local coordinator on a free port; CPU
collectives over gloo), so the devices of all processes form one ``Mesh``. Each run
trains an MLP on a synthetic 10-class problem with AdamW after global-norm clipping;
the params are replicated and the optimizer state is ZeRO-1, created in its shards by
``aj.sharded_init(..., mode="zero1")``. The runs:

1. data parallel: 2 processes x 4 devices, the batch split over the 8 devices, against
   1 process x 8 devices (the same numbers to float32 rounding: the gradient sums are
   taken in another order);
2. checkpoints across process counts (not with ``--quick``): a run saves an orbax
   checkpoint half-way in 2 processes x 4 devices; 1 process x 2 devices restores it in
   its own shardings and finishes the training, bit-identically to the uninterrupted
   run; and the other way round (1 x 2 saves, 2 x 2 restores). Here every device
   computes the whole batch's gradient, so no float sum depends on the layout.

Every worker is stopped by the launcher, even on failure or timeout. On a real cluster
each host runs the worker once (``jax.distributed.initialize()`` finds the coordinator
from the cluster's environment: SLURM, Open MPI, Kubernetes, Cloud TPU); see the README,
"Scaling out".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 128
BATCH_LAYOUTS = ("data", "replicated")


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, devices: int, args: list[str], timeout: float = 120.0,
           port: int | None = None) -> None:
    """Runs ``processes`` workers with ``devices`` CPU devices each; raises if one fails.

    All workers are killed when one fails or the timeout passes; the coordinator listens
    on ``port`` (default: a free one).
    """
    port = port or free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--port", str(port),
           "--num-processes", str(processes), *args]
    with tempfile.TemporaryDirectory() as logs, contextlib.ExitStack() as files:
        procs: list[subprocess.Popen] = []
        try:
            for i in range(processes):
                log = files.enter_context(open(os.path.join(logs, f"{i}.log"), "w+"))
                procs.append(subprocess.Popen(cmd + ["--process-id", str(i)], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in procs):
                    break  # one failed: the others may wait for it forever
                time.sleep(0.05)
            codes = [p.poll() for p in procs]
        finally:
            for p in procs:  # always stopped, whatever happened
                if p.poll() is None:
                    p.kill()
                p.wait()
        if codes != [0] * processes:
            tails = []
            for i, code in enumerate(codes):
                with open(os.path.join(logs, f"{i}.log")) as f:
                    tails.append(f"--- worker {i} (exit {code}):\n{f.read()[-3000:]}")
            why = "timed out" if None in codes else "failed"
            raise RuntimeError(f"worker {why} ({timeout}s limit): {cmd}\n" + "\n".join(tails))


# ----------------------------------------------------------------------------------------
# The worker (a separate process; imports JAX only here, after XLA_FLAGS is set).


def worker(args) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                                   process_id=args.process_id)
    try:
        run_training(args)
    finally:
        if args.num_processes > 1:
            jax.distributed.shutdown()


def make_optimizer():
    import accel_jax as aj

    return aj.chain(aj.clip_by_global_norm(1.0), aj.adamw(3e-3, weight_decay=1e-4))


def make_data(n: int = 2048, seed: int = 0):
    """A synthetic 10-class problem (64 features, labels of a random linear teacher): no
    file and no scikit-learn import in the workers, which start in a few seconds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(64, 10)), axis=1).astype(np.int32)
    return x, y


def run_training(args) -> None:
    import _common
    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import accel_jax as aj

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data_x, data_y = make_data()
    params0 = _common.init_mlp(jax.random.key(0))
    replicated = NamedSharding(mesh, P())
    p_sh = jax.tree.map(lambda _: replicated, params0)  # ZeRO-1: params replicated
    # "data": each device gets a slice of the batch (data parallel: gradients all-reduced);
    # "replicated": every device computes the whole batch's gradient, so no float sum
    # depends on the number of devices and runs of any size are bit-identical.
    b_sh = NamedSharding(mesh, P("data")) if args.batch == "data" else replicated

    def global_array(value, sharding):  # each process fills its own devices' shards
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    tx = make_optimizer()
    s_sh = aj.state_shardings(tx, params0, p_sh, mode="zero1")
    params = jax.tree.map(global_array, params0, p_sh)
    checkpointer = ocp.StandardCheckpointer()
    if args.start:
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(lambda: {"params": params0, "opt_state": tx.init(params0)}),
            {"params": p_sh, "opt_state": s_sh},
        )
        restored = checkpointer.restore(os.path.abspath(args.restore), target)
        params, opt_state = restored["params"], restored["opt_state"]
    else:
        opt_state = aj.sharded_init(tx, params, mode="zero1")

    value_and_grad = jax.value_and_grad(_common.mlp_loss)
    if args.batch == "replicated":  # each device computes it whole: no partitioned sums
        value_and_grad = jax.shard_map(value_and_grad, mesh=mesh, in_specs=P(),
                                       out_specs=P(), check_vma=False)

    def step(params, opt_state, x, y):
        loss, grads = value_and_grad(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return aj.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, in_shardings=(p_sh, s_sh, b_sh, b_sh),
                   out_shardings=(p_sh, s_sh, replicated), donate_argnums=(0, 1))
    losses, times = [], []
    for i in range(args.start, args.steps):
        rng = np.random.default_rng([0, i])  # the batch is a function of the step
        idx = rng.choice(len(data_y), BATCH, replace=False)
        x, y = global_array(data_x[idx], b_sh), global_array(data_y[idx], b_sh)
        t0 = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))  # waits for the step
        times.append(time.perf_counter() - t0)
        if i + 1 == args.save_at:
            checkpointer.save(os.path.abspath(args.save), {"params": params,
                                                           "opt_state": opt_state})
            checkpointer.wait_until_finished()
    state_bytes = sum(leaf.addressable_shards[0].data.nbytes
                      for leaf in jax.tree.leaves(opt_state))
    full = multihost_utils.process_allgather({"params": params, "opt_state": opt_state},
                                             tiled=True)
    if jax.process_index() == 0:
        flat = jax.tree_util.tree_flatten_with_path(full)[0]
        np.savez(args.result, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
        with open(args.result + ".json", "w") as f:
            json.dump({"losses": losses, "step_times": times, "processes": jax.process_count(),
                       "devices": jax.device_count(), "state_bytes_per_device": state_bytes,
                       "mu_spec": str(opt_state[1][0].mu["layer_0"]["w"].sharding.spec)}, f)


# ----------------------------------------------------------------------------------------
# The launcher.


def load_result(path: str) -> tuple[dict, dict]:
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    with open(path + ".json") as f:
        return arrays, json.load(f)


def run(work: str, name: str, processes: int, devices: int, batch: str, steps: int,
        save_at: int = 0, restore_from: str | None = None, start: int = 0,
        timeout: float = 120.0) -> tuple[dict, dict]:
    """One run of ``processes`` x ``devices``; returns its final arrays and its log."""
    args = ["--batch", batch, "--steps", str(steps), "--start", str(start),
            "--result", os.path.join(work, f"{name}.npz")]
    if save_at:
        args += ["--save-at", str(save_at), "--save", os.path.join(work, f"{name}_ckpt")]
    if restore_from:
        args += ["--restore", os.path.join(work, f"{restore_from}_ckpt")]
    launch(processes, devices, args, timeout)
    return load_result(os.path.join(work, f"{name}.npz"))


def data_parallel(work: str, steps: int) -> dict:
    """2 processes x 4 devices and 1 process x 8 devices, the batch split over the 8."""
    return {"two_process": run(work, "two_process", 2, 4, "data", steps),
            "one_process": run(work, "one_process", 1, 8, "data", steps)}


def checkpoint_round_trip(work: str, steps: int) -> dict:
    """Saves half-way in 2 processes x 4 devices (state split 8 ways) and in 1 process x 2
    devices (2 ways); each checkpoint is restored by the other process count in other
    shardings (1 x 2 and 2 x 2 devices) and the training finished there."""
    half = steps // 2
    return {
        "saved_2p": run(work, "saved_2p", 2, 4, "replicated", steps, save_at=half),
        "saved_1p": run(work, "saved_1p", 1, 2, "replicated", steps, save_at=half),
        "restored_2p_in_1p": run(work, "restored_2p_in_1p", 1, 2, "replicated", steps,
                                 restore_from="saved_2p", start=half),
        "restored_1p_in_2p": run(work, "restored_1p_in_2p", 2, 2, "replicated", steps,
                                 restore_from="saved_1p", start=half),
    }


def max_abs_difference(a: dict, b: dict) -> float:
    import numpy as np

    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
               if a[k].size else 0.0 for k in a)


def identical(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def main(argv: list[str] | None = None) -> dict:
    import _common

    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 100)")
    args = p.parse_args(argv)
    steps = args.steps or (4 if args.quick else 100)
    with tempfile.TemporaryDirectory() as work:
        out = data_parallel(work, steps)
        if not args.quick:
            out.update(checkpoint_round_trip(work, steps))
    median = lambda t: sorted(t[1:])[len(t[1:]) // 2] if len(t) > 1 else t[0]
    print(f"{steps} steps of AdamW + global-norm clipping, ZeRO-1 state, global batch {BATCH}")
    print("| run | processes x devices | final loss | step time (median) "
          "| optimizer state per device (bytes) |")
    print("|---|---|---:|---:|---:|")
    for name, (_, log) in out.items():
        print(f"| {name} | {log['processes']} x {log['devices'] // log['processes']} "
              f"| {log['losses'][-1]:.4f} | {median(log['step_times']) * 1e3:.2f} ms "
              f"| {log['state_bytes_per_device']} |")
    two, one = out["two_process"][0], out["one_process"][0]
    result = {"runs": out, "steps": steps, "max_abs_difference": max_abs_difference(two, one)}
    print(f"data parallel, 2 processes vs 1 process: max |difference| "
          f"{result['max_abs_difference']:.2e}")
    if "saved_2p" in out:
        for restored, reference in (("restored_2p_in_1p", "saved_2p"),
                                    ("restored_1p_in_2p", "saved_1p")):
            same = identical(out[restored][0], out[reference][0])
            result[f"{restored}_identical"] = same
            print(f"{restored}: bit-identical to the uninterrupted {reference} run: {same}")
    return result


def parse_worker(argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    for name in ("port", "num-processes", "process-id", "steps", "start", "save-at"):
        p.add_argument(f"--{name}", type=int, default=0)
    p.add_argument("--batch", choices=BATCH_LAYOUTS, default="data")
    for name in ("result", "save", "restore"):
        p.add_argument(f"--{name}", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker(parse_worker(sys.argv[1:]))
    else:
        main()
