"""`shiva-bids synth OUT --participants N --sessions M --seed S` (also `shiva-bids-synth`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from shiva_bids.errors import OutputError, ShivaError, UsageError
from shiva_bids.synthetic.lesions import LOADS
from shiva_bids.synthetic.phantom import MODALITIES

PROG = "shiva-bids synth"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see `{PROG} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Write a synthetic phantom BIDS dataset with its "
                     "ground truth under OUT/derivatives/reference (not real data).")
    parser.add_argument("out", type=Path, help="output folder (created; must be empty or new)")
    parser.add_argument("--participants", type=int, default=2, help="number of participants")
    parser.add_argument("--sessions", type=int, default=1, help="sessions per participant")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (0-999 tests/demo, 1000-8999 training, 9000+ "
                             "held-out evaluation)")
    parser.add_argument("--loads", nargs="+", choices=LOADS, metavar="LOAD",
                        help=f"lesion load per participant ({', '.join(LOADS)}); default "
                             "cycles mild, severe, none")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES),
                        metavar="MOD", help=f"images to write ({', '.join(MODALITIES)})")
    parser.add_argument("--figure", action="store_true",
                        help="also write a PNG of the first unit with truth outlines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (ShivaError codes on failure)."""
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.participants < 1 or args.sessions < 1:
            raise UsageError("--participants and --sessions must be at least 1")
        if args.loads and len(args.loads) != args.participants:
            raise UsageError(f"--loads gives {len(args.loads)} values for "
                             f"{args.participants} participants")
        if args.out.exists() and any(args.out.iterdir()):
            raise OutputError(f"{args.out}: output folder exists and is not empty")
        from shiva_bids.synthetic.dataset import generate_dataset
        start = time.perf_counter()
        try:
            dataset = generate_dataset(args.out, args.participants, args.sessions, args.seed,
                                       args.loads, args.modalities, figure=args.figure)
        except OSError as exc:
            raise OutputError(f"{args.out}: cannot write the dataset ({exc})") from exc
    except ShivaError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print(f"wrote {len(dataset.units)} unit(s) to {dataset.root} "
          f"(truth in {dataset.reference_root}) in {time.perf_counter() - start:.1f} s")
    return 0
