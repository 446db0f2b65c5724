"""The methods paragraph to cite, shown in reports and written to `logs/CITATION.md`."""
from __future__ import annotations

import html
from pathlib import Path

from shiva_bids import __version__
from shiva_bids.io import atomic_write_text
from shiva_bids.markers import MARKERS

REFERENCES: dict[str, str] = {
    "PVS": "Boutinaud P, Tsuchida A, Laurent A, et al. 3D segmentation of perivascular spaces "
           "on T1-weighted 3 Tesla MR images with a convolutional autoencoder and a U-shaped "
           "neural network. Front Neuroinform. 2021;15:641600.",
    "WMH": "Tsuchida A, Boutinaud P, Verrecchia V, et al. Early detection of white matter "
           "hyperintensities using SHIVA-WMH detector. Hum Brain Mapp. 2024;45(1):e26548.",
    "CMB": "SHIVA-CMB models, P. Boutinaud et al., https://github.com/pboutinaud/SHIVA_CMB "
           "(CC BY-NC-SA 4.0).",
    "LAC": "SHIVA-LAC models, P. Boutinaud et al., https://github.com/pboutinaud/SHIVA_LAC "
           "(CC BY-NC-SA 4.0).",
    "ANTs": "Avants BB, Tustison NJ, Song G, et al. A reproducible evaluation of ANTs "
            "similarity metric performance in brain image registration. NeuroImage. "
            "2011;54(3):2033-2044.",
    "TensorFlow": "Abadi M, et al. TensorFlow: a system for large-scale machine learning. "
                  "OSDI 2016.",
}


def methods_markdown(markers: list[str], demo: bool, brain_mask_method: str = "") -> str:
    """A methods paragraph for the markers that were segmented, with references."""
    names = ", ".join(f"{MARKERS[m].description} ({m})" for m in markers) or "no marker"
    mask = f" The brain mask was obtained by {brain_mask_method}." if brain_mask_method else ""
    text = (
        f"Small vessel disease markers ({names}) were segmented with shiva-bids {__version__}, "
        "a BIDS App that applies the SHIVA ensembles of 3D U-nets. Each image was conformed to "
        "1 mm isotropic RAS, cropped to the model grid around the brain's centre of mass, and "
        "its intensities scaled as clip(x / p99, 0, 1.3) / 1.3 within the brain mask; FLAIR and "
        "SWI images were rigidly registered to the T1-weighted image with ANTs (mutual "
        f"information).{mask} The probability maps of the cross-validation folds were averaged, "
        "mapped back to the native grid of the reference image, thresholded and split into "
        "26-connected clusters; clusters smaller than the minimum size or lying mostly outside "
        "the brain were discarded.")
    if demo:
        text += (" NOTE: the models used were shiva-bids demo models trained on synthetic "
                 "phantoms; these results are not valid for research.")
    refs = [REFERENCES[m] for m in markers if m in REFERENCES] + [REFERENCES["ANTs"],
                                                                  REFERENCES["TensorFlow"]]
    return text + "\n\n### References\n\n" + "\n".join(f"- {r}" for r in refs) + "\n"


def methods_html(markdown: str) -> str:
    """The paragraph and its reference list as simple HTML (escaped)."""
    body, _, refs = markdown.partition("### References")
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in refs.splitlines()
                    if line.startswith("- "))
    return f"<p>{html.escape(body.strip())}</p><h3>References</h3><ul>{items}</ul>"


def write_citation(output_dir: Path, markdown: str) -> Path:
    """`logs/CITATION.md`, as fMRIPrep writes its boilerplate."""
    return atomic_write_text(output_dir / "logs" / "CITATION.md",
                             "# Methods (shiva-bids)\n\n" + markdown)
