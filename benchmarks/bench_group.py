"""Group level on many units: time to gather N units' outputs (default 10,000).

Generates N unit summaries with census files (4 markers, 3 clusters each) in a temporary
folder, then times (a) a baseline that only reads and parses every summary JSON, and (b) the
whole group level (table, dictionary, cluster table, QC flags, HTML report). Prints both and
the ratio. Target (issue 7): (b) under one minute for 10,000 units on 2 cores.

    python benchmarks/bench_group.py [--units 10000]
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from shiva_bids import __version__
from shiva_bids.bids.derivatives import derivative_path
from shiva_bids.config import RunConfig
from shiva_bids.group import run_group_level
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.summary import COMPLETE, MarkerSummary, UnitSummary, find_summaries, \
    write_summary


def make_units(output_dir: Path, count: int) -> None:
    for i in range(count):
        summary = UnitSummary(subject=f"{i:05d}", session=None, status=COMPLETE,
                              software_version=__version__, brain_volume_mm3=1.1e6 + i,
                              qc={"main_norm_peak": 0.5 + (i % 7) / 100})
        for marker in MARKER_NAMES:
            census = derivative_path(output_dir, summary.entities, "dseg", ".tsv",
                                     space="T1w", seg=marker)
            census.parent.mkdir(parents=True, exist_ok=True)
            census.write_text("index\tname\tvolume_mm3\tregion\n" + "".join(
                f"{k}\t{marker}{k:03d}\t{5 + k + i % 11}\tDeep WM L\n" for k in (1, 2, 3)))
            summary.markers[marker] = MarkerSummary(
                marker=marker, status="done", n_clusters=3, total_volume_mm3=30.0 + i % 11,
                regions={"Deep WM L": {"count": 3, "total_volume_mm3": 30.0}},
                files={"census": str(census.relative_to(output_dir))})
        write_summary(output_dir, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        start = time.perf_counter()
        make_units(out, args.units)
        print(f"generated {args.units} units in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        for path in find_summaries(out):
            json.loads(path.read_text())
        baseline = time.perf_counter() - start
        config = RunConfig(bids_dir=Path(tmp) / "bids", output_dir=out, analysis_level="group")
        start = time.perf_counter()
        run_group_level(config)
        full = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"baseline (read + parse {args.units} summaries): {baseline:.2f} s")
    print(f"group level ({args.units} units, {4 * 3 * args.units} clusters): {full:.2f} s "
          f"= {full / baseline:.1f}x baseline; peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
