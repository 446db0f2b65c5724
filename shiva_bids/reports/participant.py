"""The participant report: `output_dir/sub-X[_ses-Y].html`, self-contained (images embedded).

Figures are PNG files under `sub-X[/ses-Y]/figures/` (listed in .bidsignore): marker figures
are drawn from the outputs on disk, QC figures are saved while the unit is processed (they need
the model-space images). The HTML is rendered from the unit summary plus those files, which is
what `--reports-only` re-runs.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from shiva_bids.bids.derivatives import unit_dir
from shiva_bids.io import atomic_path, atomic_write_text
from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing.atlases import APPROXIMATE_NOTE
from shiva_bids.postprocessing.standard import STANDARD_GROUPS, standard_values
from shiva_bids.reports import figures
from shiva_bids.reports.citation import methods_html, methods_markdown
from shiva_bids.reports.render import Figure, environment, stylesheet
from shiva_bids.summary import UnitSummary
from shiva_bids.volume import Volume

# QC figure names saved by the processing step, in report order, with their titles.
QC_FIGURES: dict[str, str] = {
    "cropbox": "Brain mask and model crop box on the reference image",
    "flairedges": "FLAIR edges (red) over the T1w: rigid registration check",
    "swiedges": "SWI edges (red) over the T1w: rigid registration check",
    "histograms": "Intensities after normalisation (inside the brain mask)",
    "brainmask": "Brain mask on the reference image",
}
MARKER_FIGURES: dict[str, str] = {
    "mosaic": "Probability (red) and clusters (yellow outlines) on the reference image",
    "zoom": "Largest clusters",
    "sizes": "Cluster size distribution",
}


def figure_path(output_dir: Path, entities: dict[str, str], name: str) -> Path:
    """`sub-X[/ses-Y]/figures/sub-X[_ses-Y]_desc-<name>.png`."""
    stem = "_".join(f"{k}-{entities[k]}" for k in ("sub", "ses") if entities.get(k))
    return unit_dir(output_dir, entities).parent / "figures" / f"{stem}_desc-{name}.png"


def save_figure(output_dir: Path, entities: dict[str, str], name: str,
                png: bytes | None) -> Path | None:
    """Save PNG bytes atomically (nothing when `png` is None)."""
    if png is None:
        return None
    path = figure_path(output_dir, entities, name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def _load(path: Path) -> Volume:
    img = nib.load(path)
    return Volume(np.asanyarray(img.dataobj), img.affine)


def draw_marker_figures(output_dir: Path, summary: UnitSummary,
                        background: Path | None = None) -> None:
    """Draw each segmented marker's figures from its output files onto its native reference
    image (`summary.extra["reference_images"][space]`, else `background`)."""
    for name, marker in summary.markers.items():
        if marker.status != "done":
            continue
        files = {kind: output_dir / rel for kind, rel in marker.files.items()}
        reference = summary.extra.get("reference_images", {}).get(marker.space, background)
        bg = _load(Path(reference))
        prob, labels, brain = (_load(files[k]) for k in ("probseg", "dseg", "brainmask"))
        entity = name.lower()
        save_figure(output_dir, summary.entities, f"{entity}mosaic",
                    figures.mosaic(bg, overlay=prob, labels=labels, contour=brain,
                                   title=f"{name} probability and clusters"))
        rows = _read_census(files["census"])
        save_figure(output_dir, summary.entities, f"{entity}zoom",
                    figures.cluster_zooms(bg, prob, labels, rows))
        save_figure(output_dir, summary.entities, f"{entity}sizes",
                    figures.size_distribution([float(r["volume_mm3"]) for r in rows], name))


def _read_census(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def _embedded(path: Path, title: str) -> Figure | None:
    return Figure.from_png(title, path.read_bytes()) if path.is_file() else None


def _standard_rows(marker: str, regions: dict) -> list[tuple[str, int, float]]:
    """(group, count, volume) of the marker's standard region groups; [] when whole-brain."""
    values = standard_values(marker, regions)
    return [(group.replace("_", " "), values[f"{group}_count"],
             values[f"{group}_volume_mm3"]) for group, _, _ in STANDARD_GROUPS.get(marker, ())
            if values.get(f"{group}_count") is not None]


def render_participant_report(output_dir: Path, summary: UnitSummary) -> Path:
    """Render `output_dir/<unit>.html` from the summary and the saved figures."""
    done = [m for m in summary.markers.values() if m.status == "done"]
    marker_figs = {
        m.marker: [f for f in (_embedded(figure_path(output_dir, summary.entities,
                                                     f"{m.marker.lower()}{key}"), title)
                               for key, title in MARKER_FIGURES.items()) if f]
        for m in done}
    qc_figs = [f for f in (_embedded(figure_path(output_dir, summary.entities, key), title)
                           for key, title in QC_FIGURES.items()) if f]
    methods = methods_markdown([m.marker for m in done], summary.demo_models,
                               summary.brain_mask_method)
    standard = {m.marker: _standard_rows(m.marker, m.regions) for m in done}
    page = environment().get_template("participant.html").render(
        s=summary, markers=done, all_markers=list(summary.markers.values()),
        figures=marker_figs, qc_figures=qc_figs, methods_html=methods_html(methods),
        standard={k: v for k, v in standard.items() if v}, approximate_note=APPROXIMATE_NOTE,
        css=stylesheet(),
        marker_titles={k: v.description for k, v in MARKERS.items()},
        pipeline_title="SHIVA small vessel disease markers")
    return atomic_write_text(output_dir / f"{summary.unit_id}.html", page)


def rebuild_report(output_dir: Path, summary: UnitSummary) -> Path:
    """`--reports-only`: redraw the marker figures from the outputs on disk and render the
    page again (QC figures saved during processing are re-used as they are)."""
    draw_marker_figures(output_dir, summary)
    return render_participant_report(output_dir, summary)
