"""Load an input image and check its header and values before anything else touches it.

The affine is chosen like a careful reader would: the sform when its code is set, else the
qform (SHiVAi trusts the qform, reference/SHIVA.md §5.1 and §14.12, which loses sform-only
orientations). Files whose sform and qform disagree are flagged and the choice recorded (the
LST-AI#44 lesson). The orthonormality test and its two repair branches are SHiVAi's
(reference/SHIVA.md §5.1: thresholds 5e-5 and 0.005).
"""
from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from shiva_bids.bids.access import check_readable
from shiva_bids.errors import BadInputError
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348  # the smallest NIfTI header (NIfTI-2's is 540)
# reference/SHIVA.md §5.1: below this deviation the affine is left alone ...
ORTHO_TOLERANCE = 5e-5
# ... below this it is orthogonalised (polar decomposition), above it rebuilt axis-aligned.
AFFINE_CORRECTION_THRESHOLD = 0.005
# sform/qform disagreement worth a warning: 0.01 on the matrix, 0.1 mm on the translation.
SFORM_QFORM_TOLERANCE = (1e-2, 0.1)
MAX_ANISOTROPY = 3.0
# A head is > 2.5 L; a skull-stripped brain 0.9-2.2 L with exactly-zero surroundings.
STRIPPED_VOLUME_ML = (700.0, 2300.0)


@dataclass(frozen=True)
class LoadedImage:
    """An input image after header checks.

    `volume.affine` is the affine the pipeline uses (chosen, possibly corrected); `header_affine`
    the one the file declares through `affine_source`; outputs on the native grid are written
    with `header_affine` so that they overlay the input in any viewer.
    """

    path: Path
    volume: Volume
    header_affine: np.ndarray
    affine_source: str  # "sform" | "qform" | "none"
    affine_correction: str  # "none" | "orthogonalised" | "rebuilt"
    sform_qform_mismatch: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def zooms(self) -> np.ndarray:
        return self.volume.zooms


def open_image(path: Path | str) -> nib.Nifti1Image:
    """Open a NIfTI file and check what its header alone tells, without reading the voxels.

    Raises MissingInputError (66) when the file is absent, a broken link or unreadable
    (shiva_bids.bids.access), and BadInputError (65) naming the file for: an empty file,
    non-NIfTI content, a true 4D or < 3D image, an affine that is singular or not finite.
    Cheap (a few hundred bytes are read), so every input of a unit can be checked before any
    model is loaded (shiva_bids.preflight).
    """
    path = Path(path)
    check_readable(path)
    img = _open(path)
    _check_shape(path, img.shape)
    _usable_affine(path, img)
    return img


def load_image(path: Path | str, check_skull: bool = False,
               log_warnings: bool = True) -> LoadedImage:
    """Read a NIfTI file, check it, and return its float32 data with the affine to use.

    Raises what :func:`open_image` raises, and BadInputError (exit 65) with one line naming
    the file for truncated/corrupt data and all-zero or constant images. Warns (in `warnings`
    and, with `log_warnings`, the log) on sform/qform mismatch, NaN/Inf replaced by 0,
    anisotropy > 3:1, affine repairs and, with `check_skull`, images that look skull-stripped
    (SHIVA PVS models under-segment those, reference/SHIVA.md §15 #28).
    """
    path = Path(path)
    warnings: list[str] = []
    img = open_image(path)
    header_affine, source, mismatch = choose_affine(img)
    if mismatch:
        warnings.append(f"{path.name}: sform and qform disagree; using the {source}")
    if source == "none":
        warnings.append(f"{path.name}: neither sform nor qform code is set; using the "
                        "voxel-size-only affine")
    data = _read_data(path, img)
    data = _squeeze_to_3d(path, data)
    data, n_bad = _replace_non_finite(data)
    if n_bad == data.size:
        raise BadInputError(f"{path}: every voxel is NaN or Inf")
    if n_bad:
        warnings.append(f"{path.name}: {n_bad} NaN/Inf voxels set to 0")
    _reject_constant(path, data)
    zooms = np.sqrt((header_affine[:3, :3] ** 2).sum(axis=0))
    if zooms.max() / zooms.min() > MAX_ANISOTROPY:
        warnings.append(f"{path.name}: voxel sizes {np.round(zooms, 2).tolist()} mm are more "
                        f"than {MAX_ANISOTROPY:g}:1 anisotropic; results will be coarse")
    affine, correction = check_affine(header_affine, data)
    if correction == "orthogonalised":
        log.info("%s: affine orthogonalised (polar decomposition)", path.name)
    elif correction == "rebuilt":
        warnings.append(f"{path.name}: affine far from orthonormal; rebuilt axis-aligned with "
                        "the centre of mass at the origin (reference/SHIVA.md §5.1)")
    volume = Volume(data, affine)
    if check_skull and looks_skull_stripped(volume):
        warnings.append(f"{path.name}: looks skull-stripped; SHIVA models were trained on "
                        "images with skull and may under-segment (use --premasked if intended)")
    for message in warnings if log_warnings else ():
        log.warning(message)
    return LoadedImage(path, volume, header_affine, source, correction, mismatch,
                       tuple(warnings))


def _open(path: Path) -> nib.Nifti1Image:
    """nibabel's image, after a look at the first bytes so that the message says what is
    wrong (empty, not gzip, truncated, no NIfTI header) rather than nibabel's wording."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if not magic:
        raise BadInputError(f"{path}: empty file (0 bytes)")
    compressed = path.name.endswith(".gz")
    if compressed and magic != GZIP_MAGIC:
        raise BadInputError(f"{path}: named .gz but not gzip-compressed (an uncompressed "
                            "image must be named .nii)")
    try:
        with (gzip.open(path) if compressed else open(path, "rb")) as stream:
            head = stream.read(NIFTI1_HEADER_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BadInputError(f"{path}: the compressed data are truncated or corrupt within "
                            f"the header ({_short(exc, path)})") from exc
    if len(head) < NIFTI1_HEADER_BYTES:
        raise BadInputError(f"{path}: truncated or not NIfTI: it ends after {len(head)} "
                            f"bytes, inside the {NIFTI1_HEADER_BYTES}-byte NIfTI header")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for non-NIfTI content
        raise BadInputError(f"{path}: not a NIfTI image (no NIfTI-1 or NIfTI-2 header: "
                            f"{_short(exc, path)})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadInputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def _read_data(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    try:
        return np.asarray(img.dataobj, dtype=np.float32)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise BadInputError(f"{path}: image data cannot be read, the file is truncated or "
                            f"corrupt ({_short(exc, path)})") from exc


def _short(exc: Exception, path: Path | None = None) -> str:
    """The first line of an error message, without the file's path (already said)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if path is not None:
        text = text.replace(f"'{path}'", "the file").replace(str(path), "the file")
    return text[:120]


def choose_affine(img: nib.Nifti1Image) -> tuple[np.ndarray, str, bool]:
    """(affine, "sform"|"qform"|"none", sform/qform mismatch) per the careful-reader rule."""
    header = img.header
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    mismatch = False
    if s_code and q_code:
        mat_tol, trans_tol = SFORM_QFORM_TOLERANCE
        mismatch = bool(np.abs(sform[:3, :3] - qform[:3, :3]).max() > mat_tol
                        or np.abs(sform[:3, 3] - qform[:3, 3]).max() > trans_tol)
    if s_code:
        return np.asarray(sform, dtype=float), "sform", mismatch
    if q_code:
        return np.asarray(qform, dtype=float), "qform", mismatch
    return np.asarray(header.get_base_affine(), dtype=float), "none", mismatch


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    """One 3D volume: trailing singleton dimensions are fine, a 4D series or a 2D slice not."""
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise BadInputError(f"{path}: 4D image with shape {tuple(shape)}; a single 3D volume "
                            "is expected")
    if len(shape) < 3:
        raise BadInputError(f"{path}: {len(shape)}D image; a 3D volume is expected")
    if min(shape[:3]) < 2:
        raise BadInputError(f"{path}: image shape {tuple(shape)} is not a 3D volume")


def _squeeze_to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    _check_shape(path, data.shape)
    return data.reshape(data.shape[:3])


def _usable_affine(path: Path, img: nib.Nifti1Image) -> None:
    """The affine the pipeline will use must map voxels to space: finite and invertible
    (a zero voxel size or a NaN in the header has no orientation to resample from)."""
    affine, source, _ = choose_affine(img)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    usable = bool(np.isfinite(affine).all() and zooms.min() > 0
                  and abs(np.linalg.det(affine[:3, :3] / zooms)) > 1e-6)
    if not usable:
        name = "voxel-size-only" if source == "none" else source
        raise BadInputError(f"{path}: the {name} affine is singular or not finite (voxel "
                            f"sizes {np.round(zooms, 3).tolist()} mm); the image has no usable "
                            "orientation")


def _replace_non_finite(data: np.ndarray) -> tuple[np.ndarray, int]:
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        data = np.where(bad, np.float32(0), data)
    return data, n_bad


def _reject_constant(path: Path, data: np.ndarray) -> None:
    low, high = float(data.min()), float(data.max())
    if high == low:
        what = "all zero" if high == 0 else f"constant (every voxel = {high:g})"
        raise BadInputError(f"{path}: image is {what}")


def affine_deviation(affine: np.ndarray) -> float:
    """max |R R^T - I| of the rotation part with voxel sizes divided out (SHIVA.md §5.1)."""
    rzs = np.asarray(affine, dtype=float)[:3, :3]
    rot = rzs / np.sqrt((rzs ** 2).sum(axis=0))
    return float(np.abs(rot @ rot.T - np.eye(3)).max())


def check_affine(affine: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, str]:
    """SHiVAi's orthonormality repair (reference/SHIVA.md §5.1).

    deviation < 5e-5: unchanged; < 0.005: the rotation is replaced by its nearest orthogonal
    matrix (U V^T of the SVD), keeping voxel sizes and translation; otherwise a new axis-aligned
    affine keeps each axis's dominant direction, sign and voxel size and puts the intensity
    centre of mass at world (0, 0, 0).
    """
    affine = np.asarray(affine, dtype=float)
    deviation = affine_deviation(affine)
    if deviation < ORTHO_TOLERANCE:
        return affine, "none"
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if deviation < AFFINE_CORRECTION_THRESHOLD:
        u, _, vt = np.linalg.svd(affine[:3, :3] / zooms)
        fixed = affine.copy()
        fixed[:3, :3] = (u @ vt) * zooms
        return fixed, "orthogonalised"
    ornt = nib.orientations.io_orientation(affine)
    rzs = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(ornt):
        rzs[int(world), axis] = sign * zooms[axis]
    com = np.asarray(ndimage.center_of_mass(np.abs(data)))
    rebuilt = np.eye(4)
    rebuilt[:3, :3] = rzs
    rebuilt[:3, 3] = -rzs @ com
    return rebuilt, "rebuilt"


def looks_skull_stripped(volume: Volume) -> bool:
    """True when the non-zero voxels form a brain-sized blob in an exactly-zero background.

    Scanner images with skull have noisy (non-zero) backgrounds and a head volume > 2.5 L; a
    skull-stripped image has most voxels exactly 0 and 0.7-2.3 L of non-zero tissue.
    """
    data = volume.data
    nonzero = data != 0
    zero_fraction = 1.0 - nonzero.mean()
    volume_ml = nonzero.sum() * volume.voxel_volume / 1000.0
    low, high = STRIPPED_VOLUME_ML
    return bool(zero_fraction > 0.3 and low <= volume_ml <= high)
