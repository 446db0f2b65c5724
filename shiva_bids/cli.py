"""Command line: `shiva-bids bids_dir output_dir {participant,group} [options]`.

The BIDS-App form (reference/BIDS_APPS.md §1.1, §1.5) with fMRIPrep-style flags: hyphen and
underscore spellings are both accepted, `sub-`/`ses-` prefixes are stripped, labels may come
from a file with one label per line. Parsing produces a frozen :class:`RunConfig`; nothing
else in the package reads `sys.argv`.

Extra commands that do not take the BIDS-App positionals are dispatched on the first word:
`shiva-bids demo OUT`, `shiva-bids synth OUT ...`, `shiva-bids evaluate ...`,
`shiva-bids models list --models-dir DIR`. They are registered in :data:`SUBCOMMANDS` by their
modules.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from shiva_bids import __version__
from shiva_bids.config import (BRAIN_MASK_METHODS, DEVICES, ENGINES, LEVELS, PIPELINES,
                               PRECISIONS, REGION_MODES, TTA_MODES, RunConfig)
from shiva_bids.errors import ExitCode, ShivaError, UnknownLevelError, UsageError
from shiva_bids.markers import MARKER_NAMES

PROG = "shiva-bids"
DEFAULT_WORK_DIR = Path("work")
log = logging.getLogger("shiva_bids")

EXIT_CODES_HELP = """exit codes (details per level: docs/usage.md):
  participant level: 0 when every selected unit is complete; otherwise the class shared
  by every unit that is not (65, 66, 73, 75); 1 for a mix of classes or an internal error.
  group level: 0 when every expected unit is complete; 66 when one is failed, incomplete
  or not run (the table lists each with its status).
  0   success
  1   an internal error, or units that failed for different reasons
      (see output_dir/logs/crash-*.txt)
  16  the input dataset failed BIDS validation
  17  unknown analysis level
  18  the participant/session labels or the filter file select nothing
  64  command-line usage error (also: a misspelt entity in the filter file; an output or
      work folder inside bids_dir)
  65  bad input data (an image corrupt, truncated, not NIfTI, 4D, constant, with a
      singular affine; a model whose checksum does not match)
  66  input missing or unreadable (permission denied, broken link), or a selected unit
      lacks its T1w, or annexed files of the selected participants are not fetched
      (DataLad: the error gives the `datalad get` command); group level: a selected unit
      is not complete
  73  the output or work folder cannot be created or written (e.g. disk full)
  75  temporary failure (e.g. GPU out of memory): retrying may succeed
"""

# Commands that replace the BIDS-App positionals: name -> "module:function" taking argv.
SUBCOMMANDS: dict[str, str] = {
    "demo": "shiva_bids.demo:main",
    "synth": "shiva_bids.synthetic.cli:main",
    "evaluate": "shiva_bids.evaluation.cli:main",
    "models": "shiva_bids.models.listing:main",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become :class:`UsageError` (exit 64); also used
    by subcommands (`shiva-bids models`)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _strip(prefix: str) -> Callable[[str], str]:
    def strip(value: str) -> str:
        return value[len(prefix):] if value.startswith(prefix) else value

    return strip


def _expand_labels(values: Sequence[str] | None, prefix: str, what: str) -> tuple[str, ...]:
    """Labels as given, or read from a file (one per line) when a single value is a file.

    Prefixes are stripped, duplicates dropped, order kept.
    """
    if not values:
        return ()
    if len(values) == 1 and Path(values[0]).is_file():
        file = values[0]
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file}: cannot read the {what} file ({exc})") from exc
        values = [line.strip() for line in text.splitlines() if line.strip()
                  and not line.startswith("#")]
        if not values:
            raise UsageError(f"{file}: the {what} file is empty")
    strip = _strip(prefix)
    labels: list[str] = []
    for value in values:
        label = strip(value.strip())
        if not label or not label.replace("+", "").isalnum():
            raise UsageError(f"invalid {what} {value!r}: BIDS labels are alphanumeric")
        if label not in labels:
            labels.append(label)
    return tuple(labels)


def _key_values(pairs: Sequence[str] | None, option: str, convert: Callable[[str], object],
                keys: Sequence[str] | None = None) -> dict:
    """Parse `KEY=VALUE` pairs (e.g. `--threshold PVS=0.4`)."""
    result: dict = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}")
        if keys is not None:
            key = key.upper()
            if key not in keys:
                raise UsageError(f"{option}: unknown key {key!r} (choose from {', '.join(keys)})")
        try:
            result[key] = convert(value)
        except ValueError as exc:
            raise UsageError(f"{option}: bad value in {pair!r} ({exc})") from exc
    return result


def _probability(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise ValueError("a probability threshold must be in [0, 1)")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _memory_gb(value: str) -> float:
    """`--mem` in GB; unit suffixes K/M/G/T (with an optional B) are accepted."""
    text = value.strip().upper().removesuffix("B")
    scale = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    factor = scale.get(text[-1:], None)
    number = float(text[:-1] if factor is not None else text)
    if number <= 0:
        raise ValueError("must be positive")
    return number * (factor or 1.0)


def _load_filter_file(path: str | None) -> dict:
    """Read `--bids-filter-file`: a JSON object keyed by modality (t1w, flair, swi, t2w)."""
    if path is None:
        return {}
    file = Path(path)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: cannot read the BIDS filter file ({exc})") from exc
    if not text.strip():
        raise UsageError(f"{file}: the BIDS filter file is empty")
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{file}: the BIDS filter file is not valid JSON ({exc})") from exc
    allowed = {"t1w", "flair", "swi", "t2w"}
    if not isinstance(filters, dict) or not set(filters) <= allowed or not all(
            isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"{file}: the BIDS filter file must map some of {sorted(allowed)} "
                         "to objects of BIDS entities")
    return filters


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App argument parser (every flag documented in `--help`)."""
    parser = _Parser(
        prog=PROG,
        description="SHIVA small-vessel-disease markers (PVS, WMH, CMB, LAC) from a BIDS "
                    "dataset, written as BIDS-Derivatives in each participant's native space. "
                    f"Other commands: `{PROG} demo OUT` (phantom data + demo models), "
                    f"`{PROG} synth OUT` (phantom dataset), `{PROG} evaluate` (accuracy "
                    f"against manual labels), `{PROG} models list --models-dir DIR` (the model "
                    "releases found and which one each marker would use).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the input BIDS dataset (never modified)")
    parser.add_argument("output_dir", type=Path,
                        help="where the derivative dataset is written (not bids_dir itself; "
                             "bids_dir/derivatives/<name> is fine)")
    parser.add_argument("analysis_level", metavar="{participant,group}",
                        help="participant: process each participant/session; group: gather "
                             "every participant's outputs into one table and report")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    sel = parser.add_argument_group("selecting inputs")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="participants to process (`sub-` optional), or a file with one label "
                          "per line; default: all")
    sel.add_argument("--session-label", "--session_label", "--session-id", "--session_id",
                     nargs="+",
                     metavar="LABEL",
                     help="sessions to process (`ses-` optional), or a file; default: all")
    sel.add_argument("--bids-filter-file", "--bids_filter_file", metavar="FILE",
                     help="JSON object with pybids filters per modality (keys t1w, flair, swi, "
                          "t2w), as in fMRIPrep, e.g. {\"t1w\": {\"acquisition\": \"mprage\"}}")
    sel.add_argument("--bids-database-dir", "--bids_database_dir", type=Path, metavar="DIR",
                     help="pybids index database, created if absent and re-used by later runs")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation",
                     "--skip_bids_validator", action="store_true",
                     help="do not run the BIDS validator on bids_dir")
    sel.add_argument("--derivatives", nargs="+", metavar="NAME=PATH",
                     help="precomputed derivative datasets (brain masks, segmentations such as "
                          "fMRIPrep/sMRIPrep, FreeSurfer aseg or SynthSeg)")

    pipe = parser.add_argument_group("what to compute")
    pipe.add_argument("--pipeline", choices=PIPELINES, default="shiva",
                      help="shiva: SVD markers (default); fetal-cgm: dHCP fetal cortical grey "
                           "matter from T2w")
    pipe.add_argument("--markers", nargs="+", type=str.upper, choices=MARKER_NAMES,
                      metavar="MARKER",
                      help="markers to segment (PVS WMH CMB LAC); default: every marker whose "
                           "model and input images are available")
    pipe.add_argument("--models-dir", "--models_dir", type=Path, metavar="DIR",
                      help="folder holding the SHIVA model folders and their model_info*.json "
                           "descriptors (searched recursively)")
    pipe.add_argument("--model", nargs="+", metavar="MARKER=DESCRIPTOR",
                      help="force the descriptor used for a marker, e.g. "
                           "PVS=/models/T1-PVS/model_info.json")
    pipe.add_argument("--skip-model-checksum", "--skip_model_checksum", action="store_true",
                      help="do not verify the md5 of model files (warns; not recommended)")
    pipe.add_argument("--fetal-largest-component", "--fetal_largest_component",
                      action="store_true",
                      help="fetal-cgm: keep only the largest 26-connected component of the BDN "
                           "brain mask as CGM's region of interest (not in the published dHCP "
                           "system, which uses the BDN argmax as is)")
    pipe.add_argument("--tta", choices=TTA_MODES, default="none",
                      help="test-time augmentation: flip also predicts the left-right mirrored "
                           "input and averages (twice the inference time); default none, as "
                           "SHIVA")
    pipe.add_argument("--regions", choices=REGION_MODES, default="auto",
                      help="where regional statistics come from: auto (default): a "
                           "segmentation from --derivatives (aseg, aparc+aseg, SynthSeg) if "
                           "found, else the template atlas (FreeSurfer Desikan-Killiany labels "
                           "registered through the template; approximate); atlas or "
                           "derivatives: only that source; none: whole-brain statistics only")
    pipe.add_argument("--threshold", nargs="+", metavar="MARKER=P",
                      help="probability thresholds (defaults PVS=0.5 WMH=0.2 CMB=0.5 LAC=0.2)")
    pipe.add_argument("--min-cluster-size", "--min_cluster_size", nargs="+", metavar="MARKER=N",
                      help="minimum cluster sizes in mm^3, i.e. voxels of the 1 mm model grid "
                           "(defaults PVS=5 WMH=1 CMB=1 LAC=3)")

    prep = parser.add_argument_group("preprocessing")
    prep.add_argument("--brain-mask", "--brain_mask", choices=BRAIN_MASK_METHODS,
                      default="auto",
                      help="auto: a mask from --derivatives if found, else template-based "
                           "extraction; template: always template-based; shiva: the SHIVA "
                           "brain-mask model from --models-dir")
    prep.add_argument("--premasked", action="store_true",
                      help="the inputs are already skull-stripped: the mask is the non-zero "
                           "voxels (SHIVA models under-segment PVS on such inputs)")
    prep.add_argument("--replace-t1", "--replace_t1", choices=("t2",), metavar="t2",
                      help="use the T2w in place of the T1w (channel 0)")
    prep.add_argument("--inverse-t2", "--inverse_t2", action="store_true",
                      help="with --replace-t1 t2: invert the normalised T2w inside the brain "
                           "(1 - x), as SHIVA PVS v2 expects")
    prep.add_argument("--keep-model-space", "--keep_model_space", action="store_true",
                      help="also write the probability maps, cluster masks and labelled "
                           "clusters on the 1 mm model grid (res-model files: SHiVAi's own "
                           "outputs) and keep the preprocessed model-grid images in the work "
                           "folder")
    prep.add_argument("--sloppy", action="store_true",
                      help="TESTING ONLY: a cheaper rigid registration (no unsmoothed level, "
                           "10%% sampling: ~3.5x less CPU; FLAIR error 0.21 against 0.12 mm on "
                           "phantoms); every unit it touches carries a warning saying so")

    run = parser.add_argument_group("execution")
    run.add_argument("-w", "--work-dir", "--work_dir", type=Path, default=None,
                     help="folder for intermediate files (default: ./work); like output_dir, "
                          "never inside bids_dir except under bids_dir/derivatives/")
    run.add_argument("--nprocs", "--nthreads", "--n_cpus", "--n-cpus", type=_positive_int,
                     default=None, metavar="N",
                     help="participants/sessions preprocessed in parallel (default: CPU count); "
                          "inference, one process at a time, uses this many threads")
    run.add_argument("--omp-nthreads", "--omp_nthreads", type=_positive_int, default=None,
                     metavar="N", help="single-threaded ANTs worker processes per unit's "
                                       "preprocessing (default: CPU count / nprocs; fewer units "
                                       "than --nprocs share the spare CPUs) and the least number "
                                       "of TensorFlow threads; results never depend on it")
    run.add_argument("--mem", "--mem-gb", "--mem_gb", type=_memory_gb, metavar="GB",
                     help="memory budget in GB (suffixes M, G accepted); sizes inference batches")
    run.add_argument("--device", choices=DEVICES, default="auto",
                     help="where the networks run (auto: GPU when one is visible)")
    run.add_argument("--engine", choices=ENGINES, default="auto",
                     help="inference engine (auto: OpenVINO on the CPU, TensorFlow on a GPU); "
                          "every fold is converted to OpenVINO IR once and cached")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="OpenVINO compute precision on the CPU; bf16 (about 2x faster) only "
                          "where the CPU has native bf16, else fp32 after one warning")
    run.add_argument("--reports-only", "--reports_only", action="store_true",
                     help="rebuild the reports from existing outputs, compute nothing")
    run.add_argument("--stop-on-first-crash", "--stop_on_first_crash", action="store_true",
                     help="stop at the first participant that fails")
    run.add_argument("--force", action="store_true",
                     help="recompute participants whose outputs are already complete")
    run.add_argument("--random-seed", "--random_seed", type=int, default=0, metavar="N",
                     help="seed for every random step (default 0)")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="more log output (-v info per stage, -vv debug and tracebacks)")
    run.add_argument("--notrack", action="store_true", help="accepted for compatibility; "
                     "shiva-bids never sends anything anywhere")
    return parser


def _check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None,
                 database_dir: Path | None, level: str) -> None:
    """Nothing is written into the input dataset: `output_dir`, the participant level's work
    folder (given, or the default ./work) and `--bids-database-dir` may be neither `bids_dir`
    nor inside it, except under bids_dir/derivatives/."""
    bids = bids_dir.resolve()
    work = (work_dir or DEFAULT_WORK_DIR) if level == "participant" else None
    folders = [("output_dir", output_dir), ("--work-dir", work),
               ("--bids-database-dir", database_dir)]
    for what, folder in folders:
        if folder is None:
            continue
        path = folder.resolve()
        if path == bids:
            raise UsageError(f"{what} {folder} is the input dataset; use for example "
                             f"{bids_dir / 'derivatives' / 'shiva-bids'}")
        if path.is_relative_to(bids) and not path.is_relative_to(bids / "derivatives"):
            default = " (the default ./work of a run started inside the dataset; give " \
                      "-w DIR outside it)" if what == "--work-dir" and work_dir is None else ""
            raise UsageError(f"{what} {path} is inside the input dataset{default}; only "
                             f"{bids_dir / 'derivatives'} may hold files written by "
                             f"{PROG}")


def parse_args(argv: Sequence[str]) -> RunConfig:
    """Parse BIDS-App arguments into a :class:`RunConfig` (raises :class:`ShivaError`)."""
    args = build_parser().parse_args(list(argv))
    if args.analysis_level not in LEVELS:
        raise UnknownLevelError(f"unknown analysis level {args.analysis_level!r} "
                                f"(choose participant or group)")
    if args.inverse_t2 and not args.replace_t1:
        raise UsageError("--inverse-t2 needs --replace-t1 t2")
    if args.regions == "derivatives" and not args.derivatives \
            and args.analysis_level == "participant":
        raise UsageError("--regions derivatives needs a segmentation dataset in --derivatives")
    _check_paths(args.bids_dir, args.output_dir, args.work_dir, args.bids_database_dir,
                 args.analysis_level)
    cpus = os.cpu_count() or 1
    nprocs = args.nprocs or cpus
    omp = args.omp_nthreads or max(1, cpus // nprocs)
    if omp > cpus:
        log.warning("--omp-nthreads %d is more than the %d CPUs available", omp, cpus)
    return RunConfig(
        bids_dir=args.bids_dir.absolute(),
        output_dir=args.output_dir.absolute(),
        analysis_level=args.analysis_level,
        participant_labels=_expand_labels(args.participant_label, "sub-", "participant label"),
        session_labels=_expand_labels(args.session_label, "ses-", "session label"),
        bids_filters=_load_filter_file(args.bids_filter_file),
        bids_database_dir=args.bids_database_dir and args.bids_database_dir.absolute(),
        skip_bids_validation=args.skip_bids_validation,
        work_dir=(args.work_dir or DEFAULT_WORK_DIR).absolute(),
        nprocs=nprocs,
        omp_nthreads=omp,
        mem_gb=args.mem,
        device=args.device,
        engine=args.engine,
        precision=args.precision,
        pipeline=args.pipeline,
        models_dir=args.models_dir and args.models_dir.absolute(),
        model_overrides=_key_values(args.model, "--model", lambda v: Path(v).absolute(),
                                    MARKER_NAMES),
        skip_model_checksum=args.skip_model_checksum,
        markers=tuple(dict.fromkeys(args.markers or ())),
        derivatives=_key_values(args.derivatives, "--derivatives", lambda v: Path(v).absolute()),
        brain_mask=args.brain_mask,
        regions=args.regions,
        premasked=args.premasked,
        replace_t1=args.replace_t1,
        inverse_t2=args.inverse_t2,
        tta=args.tta,
        thresholds=_key_values(args.threshold, "--threshold", _probability, MARKER_NAMES),
        min_cluster_sizes=_key_values(args.min_cluster_size, "--min-cluster-size",
                                      _positive_int, MARKER_NAMES),
        keep_model_space=args.keep_model_space,
        sloppy=args.sloppy,
        fetal_largest_component=args.fetal_largest_component,
        reports_only=args.reports_only,
        stop_on_first_crash=args.stop_on_first_crash,
        force=args.force,
        random_seed=args.random_seed,
        verbosity=args.verbose,
    )


def run_level(config: RunConfig) -> int:
    """Run the requested analysis level; returns the exit code."""
    if config.analysis_level == "participant":
        from shiva_bids.participant import run_participant_level
        return int(run_participant_level(config))
    from shiva_bids.group import run_group_level
    return int(run_group_level(config))


def _verbosity_hint(argv: Sequence[str]) -> int:
    """Count -v flags before parsing succeeds, so early errors can show tracebacks."""
    count = 0
    for arg in argv:
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
    return count


def _dispatch_subcommand(argv: Sequence[str]) -> int:
    module_name, _, function = SUBCOMMANDS[argv[0]].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # a dependency of the command is missing: a real bug, keep the traceback
        raise UsageError(f"`{PROG} {argv[0]}` is not available in this version") from exc
    return int(getattr(module, function)(list(argv[1:])))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `shiva-bids`, `python -m shiva_bids` and `run.py`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity = _verbosity_hint(argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _dispatch_subcommand(argv)
        config = parse_args(argv)
        from shiva_bids.log import setup_logging
        setup_logging(config.verbosity)
        return run_level(config)
    except ShivaError as exc:
        if verbosity >= 2:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)


__all__ = ["main", "parse_args", "build_parser", "run_level", "ExitCode"]
