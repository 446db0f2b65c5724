"""Intensity normalisation exactly as SHiVAi's code does it (reference/SHIVA.md §5.7).

Not what the model READMEs say ("min-max with max = p99", §14.2): the code keeps intensities up
to 1.3 x p99 and divides by 1.3, so p99 maps to 1/1.3 ~ 0.769.
"""
from __future__ import annotations

import numpy as np

PERCENTILE = 99.0
CLIP = 1.3
QC_BINS = 64
QC_MODE_BINS = (12, 56)  # bins searched for the histogram mode, 20-90 % (SHIVA.md §5.7)


def normalise(data: np.ndarray, mask: np.ndarray | None, inverse: bool = False,
              percentile: float = PERCENTILE) -> np.ndarray:
    """SHiVAi's normalisation, float32.

    1. NaN -> 0; 2. negatives -> 0; 3. p = percentile of the voxels inside the mask (mask != 0;
    the whole volume without a mask); 4. x / p; 5. min(x, 1.3); 6. / 1.3; 7. with `inverse`
    (T2 as T1, --inverse-t2): 1 - x inside the mask, outside unchanged.
    """
    x = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0)
    x[x < 0] = 0
    inside = None if mask is None else np.asarray(mask) != 0
    values = x if inside is None else x[inside]
    p = float(np.percentile(values, percentile)) if values.size else 0.0
    if p <= 0:
        p = float(x.max()) or 1.0  # a mask over background only: avoid dividing by 0
    x /= np.float32(p)
    np.minimum(x, CLIP, out=x)
    x /= np.float32(CLIP)
    if inverse:
        if inside is None:
            raise ValueError("inverse normalisation needs a brain mask")
        x[inside] = 1.0 - x[inside]
    return x


def norm_peak(normalised: np.ndarray) -> float:
    """QC "norm peak": left edge of the fullest of bins 12-56 of a 64-bin histogram of the
    whole normalised volume on [0, 1] (reference/SHIVA.md §5.7 and §11)."""
    counts, edges = np.histogram(normalised, bins=QC_BINS, range=(0.0, 1.0))
    lo, hi = QC_MODE_BINS
    return float(edges[lo + int(np.argmax(counts[lo:hi]))])
