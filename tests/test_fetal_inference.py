"""DeepMedic v0.7.0 tiling, subsampled inputs and ROI rule (reference/FETAL_DEEPMEDIC.md §5.2,
§5.5, §5.6) against a straightforward reference assembly, with a cheap stand-in predictor."""
from __future__ import annotations

import numpy as np
import pytest

from shiva_bids.pipelines.fetal.inference import (pad_widths, segment_volume, segments_count,
                                        subsampled_segment, tile_starts, tiles, zscore)


def test_200_cube_example_from_the_reference():
    assert pad_widths((200, 200, 200)) == [(8, 8)] * 3
    assert tile_starts(216) == [0, 29, 58, 87, 116, 145, 171]
    assert segments_count((200, 200, 200)) == 343


def test_small_dimension_gets_extra_high_side_padding():
    assert pad_widths((20, 29, 30)) == [(8, 17), (8, 8), (8, 8)]


def test_zscore_uses_every_voxel_population_std():
    x = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    z = zscore(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (x - x.mean()) / x.std(ddof=0), rtol=1e-6)


def _reference_starts(padded):
    starts, nominal = [], 0
    while True:
        end = min(nominal + 45, padded)
        starts.append(end - 45)
        if end >= padded:
            return starts
        nominal += 29


def _reference_subsampled(padded, start, f, fill):
    """Slot by slot: ideal position low + f*k, except DeepMedic's quirk when low < 0."""
    n = {3: 26, 5: 22}[f]
    out = np.full((n, n, n), fill, np.float32)
    per_axis = []
    for s, d in zip(start, padded.shape):
        low = s - (16 if f == 3 else 32)
        hi = min(low + f * n, d)
        first = (-low) // f if low < 0 else 0
        idx = []
        for k in range(n):
            src = (k - first) * f if low < 0 else low + f * k
            idx.append(src if k >= first and 0 <= src < hi else None)
        per_axis.append(idx)
    slots = [[k for k, i in enumerate(idx) if i is not None] for idx in per_axis]
    sources = [[i for i in idx if i is not None] for idx in per_axis]
    out[np.ix_(*slots)] = padded[np.ix_(*sources)]
    return out


def fake_predict(normal, sub3, sub5):
    """Position- and tile-dependent output, so overwrite order and inputs are visible."""
    centre = normal[:, 8:37, 8:37, 8:37, 0]
    tile_term = sub3.mean(axis=(1, 2, 3, 4))[:, None, None, None] \
        + 2 * sub5.mean(axis=(1, 2, 3, 4))[:, None, None, None]
    p1 = 1 / (1 + np.exp(-(centre + tile_term)))
    return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


def reference_assembly(volume, roi):
    pad = [(8, 8 + max(0, 45 - (d + 16))) for d in volume.shape]
    padded = np.pad(volume, pad, mode="reflect")
    proi = None if roi is None else np.pad(roi, pad, mode="reflect")
    corners = [padded[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)]
    fill = float(np.mean(corners))
    probs = np.zeros(padded.shape + (2,), np.float32)
    rs, cs, zs = (_reference_starts(d) for d in padded.shape)
    for z in zs:
        for c in cs:
            for r in rs:
                if proi is not None and not proi[r:r + 45, c:c + 45, z:z + 45].any():
                    continue
                normal = padded[r:r + 45, c:c + 45, z:z + 45][None, ..., None]
                s3 = _reference_subsampled(padded, (r, c, z), 3, fill)[None, ..., None]
                s5 = _reference_subsampled(padded, (r, c, z), 5, fill)[None, ..., None]
                probs[r + 8:r + 37, c + 8:c + 37, z + 8:z + 37] = fake_predict(normal, s3, s5)[0]
    probs = probs[8:8 + volume.shape[0], 8:8 + volume.shape[1], 8:8 + volume.shape[2]]
    if roi is not None:
        probs = probs * roi[..., None]
    return probs


def test_axes_of_29_to_44_voxels_are_padded_by_8_without_extra():
    assert pad_widths((29, 44, 28)) == [(8, 8), (8, 8), (8, 9)]
    rng = np.random.default_rng(4)
    volume = zscore(rng.normal(size=(29, 44, 45)))
    result = segment_volume(volume, fake_predict, None, batch_size=5)
    np.testing.assert_allclose(result.probabilities, reference_assembly(volume, None),
                               atol=1e-6)
    assert result.tiles_total == 1 * 2 * 2  # padded 45, 60, 61


@pytest.mark.parametrize("with_roi", [False, True])
def test_tiling_matches_reference_assembly(with_roi):
    rng = np.random.default_rng(3)
    volume = zscore(rng.normal(size=(50, 31, 64)))
    roi = None
    if with_roi:
        roi = np.zeros(volume.shape, np.uint8)
        roi[2:6, 3:9, 50:60] = 1  # a small ROI: some tiles are skipped
    result = segment_volume(volume, fake_predict, roi, batch_size=3)
    want = reference_assembly(volume, roi)
    np.testing.assert_allclose(result.probabilities, want, atol=1e-6)
    np.testing.assert_array_equal(result.labels, np.argmax(want, axis=-1))
    assert result.tiles_total == 2 * 2 * 3  # padded 66, 47, 80
    if with_roi:
        assert result.tiles_run < result.tiles_total
        outside = roi == 0
        assert not result.probabilities[outside].any()  # background prob is 0 outside, not 1
        assert not result.labels[outside].any()
        assert result.probabilities[roi == 1].sum(axis=-1).min() > 0.99


def test_subsampled_quirk_differs_from_aligned_grid():
    padded = np.arange(61 ** 3, dtype=np.float32).reshape(61, 61, 61)
    seg = subsampled_segment(padded, (0, 16, 0), 3, fill=-1.0)
    assert seg.shape == (26, 26, 26)
    # low = -16 on axis 0: slot 5 holds voxel 0 (not the aligned -16 + 15 = -1 -> 2)
    assert seg[5, 0, 5] == padded[0, 0, 0]
    assert seg[4, 0, 5] == -1.0
    np.testing.assert_array_equal(seg, _reference_subsampled(padded, (0, 16, 0), 3, -1.0))


def test_tile_order_is_z_outermost_r_innermost():
    starts, total = tiles((74, 74, 74))
    assert total == 8
    assert starts[:3] == [(0, 0, 0), (29, 0, 0), (0, 29, 0)]
