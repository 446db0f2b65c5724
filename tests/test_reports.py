"""Participant report: figures from outputs on disk, self-contained HTML, citation."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from shiva_bids.reports import figures
from shiva_bids.reports.citation import methods_markdown, write_citation
from shiva_bids.reports.participant import (draw_marker_figures, figure_path,
                                            render_participant_report, save_figure)
from shiva_bids.volume import Volume
from summary_factory import AFFINE, write_unit


@pytest.fixture
def report(tmp_path):
    out = tmp_path / "out"
    summary = write_unit(out, "01", "1", [8.0, 27.0, 125.0], with_images=True)
    summary.warnings.append("the T1w looks skull-stripped")
    draw_marker_figures(out, summary, out / "raw_t1w.nii.gz")
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    save_figure(out, summary.entities, "histograms",
                figures.intensity_histograms({"t1": np.random.default_rng(0).random(mask.shape)},
                                             mask))
    return out, summary, render_participant_report(out, summary)


def test_report_is_self_contained_with_every_section(report):
    out, summary, path = report
    assert path == out / "sub-01_ses-1.html"
    page = path.read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # 3 PVS + histograms
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from elsewhere
    for text in ("DEMO MODELS", "Left Deep WM", "skull-stripped", "References",
                 "Boutinaud", "PVS v9", "Quality control",
                 # atlas regions: approximate, and the standard groups (left + right)
                 "registration to a template, no individual anatomy", "centrum semiovale"):
        assert text in page, text


def test_marker_figures_are_saved_as_png(report):
    out, summary, _ = report
    for name in ("pvsmosaic", "pvszoom", "pvssizes"):
        data = figure_path(out, summary.entities, name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 2000


def test_cluster_zoom_centres_on_the_largest_cluster():
    labels = np.zeros((40, 40, 40), np.int16)
    labels[30:35, 30:35, 30:35] = 2
    vol = Volume(labels, AFFINE)
    png = figures.cluster_zooms(vol.with_data(labels.astype(float)), vol.with_data(
        (labels > 0).astype(float)), vol, [{"index": 2, "volume_mm3": 125.0}])
    assert png.startswith(b"\x89PNG")
    assert figures.cluster_zooms(vol, vol, vol, []) is None
    assert figures.size_distribution([], "PVS") is None


def test_edges_follow_intensity_steps():
    image = np.zeros((30, 30, 30), np.float32)
    image[10:20, 10:20, 10:20] = 1.0
    outline = figures.edges(image)
    assert outline[10:20, 10:20, 15].any() and not outline[0:3, 0:3, 0:3].any()


def test_citation_names_the_models_and_demo_caveat(tmp_path):
    text = methods_markdown(["PVS", "WMH"], demo=True, brain_mask_method="template")
    assert "Front Neuroinform" in text and "Hum Brain Mapp" in text and "phantoms" in text
    path = write_citation(tmp_path, text)
    assert path == tmp_path / "logs" / "CITATION.md" and "Methods" in path.read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, _, path = report
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1200,2400", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20000
