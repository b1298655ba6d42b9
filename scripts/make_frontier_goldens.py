"""Writes tests/reference/torch_<variant>.npz for RAdam, NAdamW and Adadelta.

Run from the repository root by a maintainer with torch installed (torch is not a
test dependency; ``tests/test_conformance_frontier_basic.py`` reads the data)::

    python scripts/make_frontier_goldens.py

Same problems, learning-rate rule and file layout as ``scripts/make_torch_goldens.py``
(whose pieces it reuses; see ``tests/reference/README.md``). ``spec`` is what the test
module defines for the same variant (it checks that the two agree); ``torch`` is the
torch.optim class and its arguments besides ``lr``. torch.optim has no Lion.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.make_torch_goldens import write_torch_goldens  # noqa: E402

COMMAND = "python scripts/make_frontier_goldens.py"

VARIANTS = {
    "radam_default": dict(spec=dict(lr=0.02, decay=0.98), torch=("RAdam", {})),
    "radam_weight_decay": dict(
        spec=dict(lr=0.02, weight_decay=0.1), torch=("RAdam", dict(weight_decay=0.1))
    ),
    "radam_decoupled": dict(
        spec=dict(lr=0.02, decay=0.98, weight_decay=0.1, decoupled_weight_decay=True),
        torch=("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ),
    "nadamw_default": dict(
        spec=dict(lr=0.02, decay=0.98, weight_decay=0.1),
        torch=("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ),
    "adadelta_default": dict(spec=dict(lr=1.0, decay=0.98), torch=("Adadelta", {})),
    "adadelta_weight_decay": dict(
        spec=dict(lr=1.0, weight_decay=0.1), torch=("Adadelta", dict(weight_decay=0.1))
    ),
}


def main() -> None:
    write_torch_goldens(VARIANTS, COMMAND)


if __name__ == "__main__":
    main()
