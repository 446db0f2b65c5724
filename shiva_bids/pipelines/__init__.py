"""The two pipelines of the participant level, side by side.

* :mod:`shiva_bids.pipelines.shiva`: the SHIVA markers (PVS, WMH, CMB, LAC): preprocess,
  predict with the fold ensembles, post-process, report;
* :mod:`shiva_bids.pipelines.fetal`: the dHCP fetal cortical grey matter segmentation with
  the two DeepMedic v0.7 checkpoints.

What both need before a unit runs (readable input, writable folders, the required image) is in
:mod:`shiva_bids.checks`; the level around them is :mod:`shiva_bids.participant`.
"""
