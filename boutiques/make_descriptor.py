"""Write ``boutiques/descriptor.json`` from the real argument parser (``shiva_bids.cli``).

The BIDS App execution spec (reference/BIDS_APPS.md §1.2) makes a Boutiques descriptor the way
platforms such as CBRAIN call an app (schema 0.5, §1.4). Generating it from
:func:`shiva_bids.cli.build_parser` keeps the two from drifting; ``tests/test_boutiques.py`` fails
when the committed file differs from what this script produces. Run after any CLI change:

    PYTHONPATH=$PWD python boutiques/make_descriptor.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shiva_bids import __version__
from shiva_bids.cli import PROG, build_parser

HERE = Path(__file__).resolve().parent
DESCRIPTOR = HERE / "descriptor.json"
IMAGE = f"shiva-bids:{__version__}"

# Input IDs that the BIDS App execution spec fixes (§1.2); other inputs use the parser's dest.
SPEC_IDS = {
    "bids_dir": "InputDataset",
    "output_dir": "OutputLocation",
    "analysis_level": "AnalysisLevel",
    "participant_label": "SubjectLabel",
    "session_label": "SessionLabel",
    "version": "ToolVersion",
    "help": "Help",
}
# Parser dests that name files or folders (Boutiques "File": platforms mount them).
PATH_DESTS = {"bids_dir", "output_dir", "bids_filter_file", "bids_database_dir", "models_dir",
              "work_dir"}
INTEGER_DESTS = {"nprocs", "omp_nthreads", "random_seed"}
NUMBER_DESTS = INTEGER_DESTS | {"mem"}
VERBOSITY_CHOICES = ["-v", "-vv", "-vvv"]


def _value_key(input_id: str) -> str:
    return "[" + "".join("_" + c if c.isupper() and i else c
                         for i, c in enumerate(input_id)).upper() + "]"


def _flag(action: argparse.Action) -> str:
    """The canonical spelling: the first long option (hyphenated), else the short one."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs or action.option_strings)[0]


def _input(action: argparse.Action) -> dict:
    dest = action.dest
    entry: dict = {"id": SPEC_IDS.get(dest, dest), "name": dest.replace("_", " ").capitalize(),
                   "description": (action.help or "").replace("%%", "%")}
    entry["value-key"] = _value_key(entry["id"])
    if dest == "verbose":  # a counted flag: one input whose value is the whole switch
        entry.update(type="String", optional=True, **{"value-choices": VERBOSITY_CHOICES})
        return entry
    if not action.option_strings:  # positionals
        entry.update(type="File" if dest in PATH_DESTS else "String", optional=False)
        if dest == "analysis_level":
            entry["value-choices"] = ["participant", "group"]
        return entry
    entry.update(optional=True, **{"command-line-flag": _flag(action)})
    if action.nargs == 0:  # store_true, version, help
        entry["type"] = "Flag"
        return entry
    if dest in NUMBER_DESTS:
        entry["type"] = "Number"
        entry["integer"] = dest in INTEGER_DESTS
        entry["minimum"] = 0 if dest == "random_seed" else 1 if dest in INTEGER_DESTS else 0
        entry["exclusive-minimum"] = dest == "mem"
    else:
        entry["type"] = "File" if dest in PATH_DESTS else "String"
    if action.nargs == "+":
        entry.update(list=True, **{"min-list-entries": 1})
    if action.choices:
        entry["value-choices"] = list(action.choices)
    if action.default not in (None, False) and dest not in PATH_DESTS:
        entry["default-value"] = action.default
    return entry


def descriptor() -> dict:
    """The Boutiques descriptor (schema 0.5) of ``shiva-bids bids_dir output_dir level``."""
    parser = build_parser()
    inputs = [_input(action) for action in parser._actions]  # noqa: SLF001 - argparse API
    positional = [i for i in inputs if "command-line-flag" not in i and i["id"] != "verbose"]
    others = [i for i in inputs if i not in positional]
    command = " ".join([PROG] + [i["value-key"] for i in positional + others])
    return {
        "name": PROG,
        "tool-version": __version__,
        "schema-version": "0.5",
        "author": "shiva-bids developers",
        "description": parser.description,
        "command-line": command,
        "container-image": {"type": "docker", "image": IMAGE},
        "inputs": positional + others,
        "output-files": [
            {"id": "dataset_description", "name": "Derivative dataset description",
             "path-template": "[OUTPUT_LOCATION]/dataset_description.json",
             "optional": False},
            {"id": "logs", "name": "Logs and crash reports",
             "path-template": "[OUTPUT_LOCATION]/logs", "optional": True},
        ],
        "suggested-resources": {"cpu-cores": 2, "ram": 16, "walltime-estimate": 3600},
        "tags": {"domain": ["neuroinformatics", "mri", "bids", "small-vessel-disease"]},
        "custom": {"BIDSApplicationVersion": "1.0"},
    }


def render() -> str:
    return json.dumps(descriptor(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    DESCRIPTOR.write_text(render())
    print(f"wrote {DESCRIPTOR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
