"""The compiled Welch-windowed sinc (preprocessing/sinc.py) against ITK's, as ANTs applies it
(SHiVAi's FLAIR interpolator, reference/SHIVA.md §5.6): same values, on a rotated grid that
also leaves the moving image's field of view, and on the identity (the d = 0 weights)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from shiva_bids.preprocessing import registration
from shiva_bids.volume import Volume


@pytest.fixture(scope="module")
def moving():
    rng = np.random.default_rng(5)
    data = rng.normal(100, 30, (40, 36, 14)).astype(np.float32)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-18, -16, -20]
    return Volume(data, affine)


def _transform(path, degrees, mm):
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    t[:3, 3] = mm
    return registration.write_rigid(t, path)


@pytest.mark.parametrize("degrees, mm", [((4.0, -3.0, 5.0), (3.0, -4.0, 2.5)),
                                         ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))])
def test_compiled_welch_sinc_equals_itk(moving, tmp_path, degrees, mm):
    transform = _transform(tmp_path / "t.mat", degrees, mm)
    shape = (44, 40, 48)  # 1 mm grid, wider and much taller than the moving field of view
    affine = np.eye(4)
    affine[:3, 3] = [-22, -20, -24]
    ours = registration.warp(None, moving, shape, affine, transform).data
    itk = registration.apply_rigid(moving, shape, affine, transform, "welchWindowedSinc").data
    assert (itk == 0).any() and (itk != 0).sum() > 10000  # outside and inside the FOV
    np.testing.assert_array_equal(ours == 0, itk == 0)
    np.testing.assert_allclose(ours, itk, rtol=0, atol=1e-4)
    assert (ours == itk).mean() > 0.999
