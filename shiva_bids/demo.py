"""`shiva-bids demo OUT`: the whole tool on phantoms, with the bundled demo models, in one command.

1. writes a small phantom BIDS dataset (`OUT/bids`: 3 participants, the first with 2 sessions,
   lesion loads from mild to severe, ground truth under `OUT/bids/derivatives/reference`);
2. runs the participant level on it with the bundled demo models (`OUT/derivatives`);
3. runs the group level;
4. scores the outputs against the phantom truth (`shiva-bids evaluate`) and prints where the
   reports and the tables are.

The demo models (shiva_bids/data/demo_models, docs/demo.md) were trained on phantoms only and
are NOT for research. Real runs never fall back to them: without `--models-dir` a run stops
with `shiva_bids.models.selection.NO_MODELS_MESSAGE`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

from shiva_bids.errors import OutputError, UsageError
from shiva_bids.io import atomic_write_text

DEMO_MODELS_DIR = Path(__file__).resolve().parent / "data" / "demo_models"

DEMO_PARTICIPANTS = 3
DEMO_LOADS = ("severe", "mild", "severe")  # participant 1 (2 sessions), 2, 3
DEMO_SESSIONS = (2, 1, 1)
DEMO_MODALITIES = ("T1w", "FLAIR", "T2starw")  # what the demo models take (no T2w)
DEMO_SEED = 0  # phantom seeds 0-999 are for tests and the demo (training: 1000-8999)
DEMO_MARKER_FILE = ".shiva-bids-demo"  # written once the demo dataset is complete


def build_demo_dataset(bids_dir: Path, seed: int = DEMO_SEED) -> Path:
    """The demo's phantom BIDS dataset: participant 1 has sessions 01 and 02, the others 01;
    only the modalities the demo models use (T1w, FLAIR, T2starw)."""
    from shiva_bids.synthetic import generate_dataset

    return generate_dataset(bids_dir, n_participants=DEMO_PARTICIPANTS,
                            n_sessions=DEMO_SESSIONS, seed=seed, loads=DEMO_LOADS,
                            modalities=DEMO_MODALITIES).root


def _report_paths(output_dir: Path) -> list[Path]:
    return sorted(output_dir.rglob("*.html"))


def main(argv: Sequence[str]) -> int:
    """Entry point of `shiva-bids demo OUT`; returns the exit code of the first failing step."""
    from shiva_bids import cli
    from shiva_bids.evaluation import cli as evaluation_cli

    parser = argparse.ArgumentParser(prog="shiva-bids demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="empty (or new) folder for the whole demo")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed (0-999)")
    parser.add_argument("--nprocs", type=int, default=None, help="passed to the participant level")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        if exc.code:
            raise UsageError("invalid arguments (see `shiva-bids demo --help`)") from exc
        raise
    out = args.out.absolute()
    bids, derivatives, work = out / "bids", out / "derivatives", out / "work"
    marker = out / DEMO_MARKER_FILE
    started = time.monotonic()
    if marker.is_file():  # a previous demo: reuse its dataset; done units are skipped
        print(f"[demo] re-using the phantom dataset of an earlier demo in {bids}", flush=True)
    elif out.exists() and any(out.iterdir()):
        raise OutputError(f"{out}: the demo folder must be new, empty, or an earlier demo's")
    else:
        print(f"[demo] writing a phantom BIDS dataset to {bids}", flush=True)
        build_demo_dataset(bids, args.seed)
        atomic_write_text(marker, f"shiva-bids demo, phantom seed {args.seed}\n")
    common = ["-w", str(work)] + (["--nprocs", str(args.nprocs)] if args.nprocs else [])
    steps = [
        ("participant level with the bundled demo models",
         lambda: cli.main([str(bids), str(derivatives), "participant",
                           "--models-dir", str(DEMO_MODELS_DIR), *common])),
        ("group level", lambda: cli.main([str(bids), str(derivatives), "group", *common])),
        ("scoring against the phantom truth",
         lambda: evaluation_cli.main(["--pred-dir", str(derivatives), "--reference-dir",
                                      str(bids / "derivatives" / "reference")])),
    ]
    for title, step in steps:
        print(f"[demo] {title} ({time.monotonic() - started:.0f} s)", flush=True)
        code = step()
        if code:
            print(f"[demo] stopped: {title} exited with {code}", flush=True)
            return code
    print(f"[demo] done in {time.monotonic() - started:.0f} s; reports:")
    for report in _report_paths(derivatives):
        print(f"  {report}")
    print(f"  accuracy table: {derivatives / 'group' / 'evaluation.tsv'}")
    print("[demo] the demo models were trained on phantoms only: NOT for research use.")
    return 0
