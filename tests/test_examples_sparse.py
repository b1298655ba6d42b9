"""examples/sparse_training.py runs (``--quick``) and reaches the sparsity it promises."""

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sparse_training.py"


def test_sparse_training_quick(capsys):
    spec = importlib.util.spec_from_file_location("sparse_training_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = {name: (sparsity, acc) for name, sparsity, _, acc, _ in module.main(["--quick"])}
    out = capsys.readouterr().out
    assert "kernel sparsity" in out and "pruning 90%" in out
    assert rows["dense"][0] == 0.0
    for target in (0.5, 0.8, 0.9):
        sparsity, acc = rows[f"pruning {target:.0%}"]
        assert abs(sparsity - target) < 1e-3
        assert acc > 0.5  # trained (10 classes: chance is 0.1)
    assert rows["strong L1 (prox, l1=0.2)"][0] > 0.0
