"""Phantom BIDS datasets with exact ground truth, and model-space training samples.

Public API (docs/synthetic.md):

* :func:`generate_dataset` writes a raw BIDS dataset plus `derivatives/reference` (truth);
* :func:`model_space_sample` returns images and truth masks on the 1 mm SHIVA model grid.
"""
from __future__ import annotations

from shiva_bids.synthetic.dataset import (SyntheticDataset, SyntheticUnit, generate_dataset,
                                          read_lesion_table)
from shiva_bids.synthetic.lesions import LOADS
from shiva_bids.synthetic.phantom import MODALITIES, SPACE_LABEL, TruthLesion
from shiva_bids.synthetic.samples import ModelSpaceSample, model_space_sample, shiva_normalise

__all__ = ["LOADS", "MODALITIES", "SPACE_LABEL", "ModelSpaceSample", "SyntheticDataset",
           "SyntheticUnit", "TruthLesion", "generate_dataset", "model_space_sample",
           "read_lesion_table", "shiva_normalise"]
