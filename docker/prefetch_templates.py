"""Put the TemplateFlow files shiva-bids uses into ``$TEMPLATEFLOW_HOME`` at image build time.

Nothing may download at run time (reference/BIDS_APPS.md §4, requirement 1; fmriprep#1801 and
mriqc#918 were read-only TemplateFlow homes in Singularity), so the image carries its templates.

``--fetch 1`` downloads every file in :data:`TEMPLATES` (network during the build) and fails if one
is missing or empty. ``--fetch 0`` (offline builds) only lays down TemplateFlow's skeleton (empty
placeholders) and checks that each query names exactly one file of it, so the run-time code finds
a readable, never-written home; the real files then have to be bound over ``$TEMPLATEFLOW_HOME``.
Add an entry here whenever the package starts using another template file.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# (template, query) pairs; each query must match exactly one file.
TEMPLATES: tuple[tuple[str, dict], ...] = (
    # registration target and template brain mask (brain extraction, regions)
    ("MNI152NLin2009cAsym", {"resolution": 1, "desc": None, "suffix": "T1w"}),
    ("MNI152NLin2009cAsym", {"resolution": 1, "desc": "brain", "suffix": "T1w"}),
    ("MNI152NLin2009cAsym", {"resolution": 1, "desc": "brain", "suffix": "mask"}),
    # coarse regions: cortex / deep grey / white matter / cerebellum / CSF
    ("MNI152NLin2009cAsym", {"resolution": 1, "desc": "carpet", "suffix": "dseg"}),
    ("MNI152NLin2009cAsym", {"desc": "carpet", "suffix": "dseg", "extension": ".tsv"}),
    # atlas: Harvard-Oxford subcortical (basal ganglia, thalamus), 25 % threshold
    ("MNI152NLin2009cAsym", {"resolution": 1, "atlas": "HOSPA", "desc": "th25",
                             "suffix": "dseg"}),
)


def prefetch(fetch: bool) -> list[Path]:
    """Fetch (or, offline, only locate) every file of :data:`TEMPLATES`; returns their paths."""
    from templateflow import api  # imported late: TEMPLATEFLOW_HOME must be set first

    paths: list[Path] = []
    for template, query in TEMPLATES:
        matches = api.ls(template, **query)
        if len(matches) != 1:
            raise SystemExit(f"TemplateFlow query {template} {query} matches {len(matches)} "
                             "files, expected 1")
        if fetch:
            path = Path(api.get(template, raise_empty=True, **query))
            if path.stat().st_size == 0:
                raise SystemExit(f"{path}: downloaded file is empty")
        else:
            path = Path(matches[0])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", choices=("0", "1"), default="1",
                        help="1: download the files; 0: skeleton only (offline build)")
    args = parser.parse_args(argv)
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        raise SystemExit("TEMPLATEFLOW_HOME is not set")
    for path in prefetch(args.fetch == "1"):
        size = path.stat().st_size
        print(f"{path.relative_to(home)}  {size} bytes{'' if size else ' (placeholder)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
