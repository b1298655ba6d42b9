"""Several processes joined by jax.distributed (JAX's multi-controller runtime, CPU
collectives over gloo), with ZeRO-1 optimizer state, through examples/multi_process.py's
launcher: a local coordinator on a free port, every worker stopped even on failure.

One scenario (4 launches, ~20-60 s on 2 cores): a run saves an orbax checkpoint half-way
in 2 processes x 4 devices (state split 8 ways), another in 1 process x 2 devices (2
ways); each checkpoint is restored by the other process count in other shardings, and
the training continues. Every device computes the whole batch's gradient, so no float sum
depends on the layout: all runs must be bit-identical. The data-parallel comparison (batch
split over devices, equal to float32 rounding) is tests/test_examples.py's quick run.
"""

import importlib.util
import os
import socket

import numpy as np
import pytest

STEPS = 6
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "multi_process.py")


def load_example():
    spec = importlib.util.spec_from_file_location("multi_process_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("orbax.checkpoint")
    mp = load_example()
    return mp.checkpoint_round_trip(str(tmp_path_factory.mktemp("multi_process")), STEPS)


def test_runs_used_the_devices_of_all_processes(runs):
    logs = {name: log for name, (_, log) in runs.items()}
    assert (logs["saved_2p"]["processes"], logs["saved_2p"]["devices"]) == (2, 8)
    assert (logs["saved_1p"]["processes"], logs["saved_1p"]["devices"]) == (1, 2)
    assert (logs["restored_1p_in_2p"]["processes"], logs["restored_1p_in_2p"]["devices"]) == (2, 4)
    for log in logs.values():
        assert log["mu_spec"] == "P('data',)"  # ZeRO-1: the moments are split over data
    # one moment set: 3 layers' w and b, mu and nu, float32; split 8, 2, 4 ways
    full = 2 * 4 * (64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10)
    assert logs["saved_2p"]["state_bytes_per_device"] < full / 8 + 1024
    assert logs["saved_1p"]["state_bytes_per_device"] < full / 2 + 1024
    assert logs["restored_1p_in_2p"]["state_bytes_per_device"] < full / 4 + 1024
    assert len(logs["saved_2p"]["losses"]) == STEPS
    assert len(logs["restored_2p_in_1p"]["losses"]) == STEPS - STEPS // 2
    assert logs["saved_2p"]["losses"][-1] < logs["saved_2p"]["losses"][0]


def test_two_processes_equal_one_process(runs):
    two, one = runs["saved_2p"][0], runs["saved_1p"][0]
    assert two.keys() == one.keys() and len(two) > 10  # params and the whole state
    for key in two:
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)


@pytest.mark.parametrize("restored, uninterrupted",
                         [("restored_2p_in_1p", "saved_2p"), ("restored_1p_in_2p", "saved_1p")])
def test_checkpoint_restored_in_another_process_count_continues_bit_identically(
        runs, restored, uninterrupted):
    a, b = runs[restored], runs[uninterrupted]
    assert a[0].keys() == b[0].keys()
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key], err_msg=key)
    assert a[1]["losses"] == b[1]["losses"][STEPS // 2:]


def test_workers_are_stopped_on_timeout_and_the_port_is_free(tmp_path):
    mp = load_example()
    port = mp.free_port()
    args = ["--batch", "data", "--steps", "1000", "--result", str(tmp_path / "r.npz")]
    with pytest.raises(RuntimeError, match="timed out"):
        mp.launch(2, 2, args, timeout=0.5, port=port)
    # Nothing is left listening on the coordinator's port. SO_REUSEADDR: the killed
    # workers' closed connections may sit in TIME_WAIT, which only a listener blocks.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
