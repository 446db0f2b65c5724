"""pybids indexing and input discovery on a 500-participant x 2-session dataset.

Builds the dataset (tiny NIfTI files: T1w, FLAIR, swi per session) in a temporary folder and
prints, against the baseline of pybids' default `BIDSLayout(root)` (validating indexer,
metadata indexed):

* our layout settings without a database (validate=False, no metadata);
* the first call with `--bids-database-dir` (builds the index) and a second call (re-uses it);
* `discover_inputs` end to end with the database re-used, and one pybids query per unit
  (what discovery would cost with per-unit queries) for comparison;
* peak RSS.

    PYTHONPATH=. python benchmarks/bench_indexing.py [N_SUBJECTS]
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bids_builder import many_participants  # noqa: E402
from shiva_bids.bids.discovery import discover_inputs, open_layout  # noqa: E402
from shiva_bids.config import RunConfig  # noqa: E402


def timed(label: str, function, baseline: float | None = None):
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    ratio = f"  ({seconds / baseline:.3g} x baseline)" if baseline else ""
    print(f"{label:<58s} {seconds:8.3f} s{ratio}", flush=True)
    return result, seconds


def main(n_subjects: int = 500) -> None:
    from bids import BIDSLayout

    with tempfile.TemporaryDirectory(prefix="bench-indexing-") as tmp:
        tmp_path = Path(tmp)
        (_, _) = timed(f"build dataset ({n_subjects} x 2 sessions x 3 images)",
                       lambda: many_participants(tmp_path / "ds", n_subjects, ("1", "2"),
                                                 ("T1w", "FLAIR", "swi")))
        root = tmp_path / "ds"
        config = RunConfig(bids_dir=root, output_dir=tmp_path / "out",
                           analysis_level="participant", bids_database_dir=tmp_path / "db")
        _, base = timed("baseline: BIDSLayout(root) (validate, metadata)",
                        lambda: BIDSLayout(root))
        timed("open_layout, no database (validate=False, no metadata)",
              lambda: open_layout(root), base)
        _, first = timed("open_layout, --bids-database-dir, first call (index)",
                         lambda: open_layout(root, config.bids_database_dir), base)
        layout, again = timed("open_layout, --bids-database-dir, second call (re-use)",
                              lambda: open_layout(root, config.bids_database_dir), base)
        print(f"{'database re-use speed-up (first / second call)':<58s} {first / again:8.1f} x")
        inputs, discover = timed("discover_inputs (database re-used), all units",
                                 lambda: discover_inputs(config), base)
        assert len(inputs) == 2 * n_subjects and all(i.t1w and i.flair and i.swi
                                                     for i in inputs)
        sample = [(i.subject, i.session) for i in inputs[:20]]
        _, per_unit = timed("one per-unit pybids query x 20 units",
                            lambda: [layout.get(subject=s, session=ses, suffix="T1w")
                                     for s, ses in sample])
        print(f"{'per-unit queries (4 roles) extrapolated to all units':<58s} "
              f"{per_unit / 20 * 4 * len(inputs):8.1f} s  "
              f"({per_unit / 20 * 4 * len(inputs) / discover:.0f} x discover_inputs)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak RSS':<58s} {peak:8.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
