"""Tools of the reliability suite: damaged inputs, runs as an ordinary user, and the checks
every case makes (issue 19): the documented exit code, one line naming the file and the
problem, no traceback, no partial output that looks complete, the input left byte-identical.

Runs go through `shiva_bids.cli.main` in this process when file permissions do not matter
(fast: nothing to import again), and through a subprocess otherwise. Tests run as root in CI,
and root reads and writes whatever it wants, so such subprocesses run under
`setpriv --inh-caps=-all --bounding-set=-all` (util-linux; Debian's `util-linux` package is
essential, so present on any Debian/Ubuntu CI machine): still uid 0, without the capabilities
that let it ignore permissions. Where that is impossible the cases are skipped with a reason.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.cli import main
from shiva_bids.models.checksums import md5_of_path

REPO = Path(__file__).resolve().parents[2]
SHAPE = (20, 24, 20)
TF_NOISE = ("cuInit", "I0000 ", "E0000 ", "W0000 ", "absl::InitializeLog")


# --------------------------------------------------------------------------- images

def image_data(shape: Sequence[int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A bright noisy ellipsoid on a zero background (a skull-stripped-looking 'head')."""
    grid = np.indices(shape).transpose(1, 2, 3, 0) - (np.array(shape) - 1) / 2
    inside = np.linalg.norm(grid / (np.array(shape) * 0.4), axis=-1) < 1
    noise = np.random.default_rng(seed).normal(100, 15, tuple(shape))
    return np.where(inside, noise, 0).astype(np.float32)


def nifti_bytes(data: np.ndarray, zooms: Sequence[float] = (1.0, 1.0, 1.0), gz: bool = True,
                **header_fields) -> bytes:
    """A NIfTI-1 file's bytes; `header_fields` overwrite header fields after nibabel wrote a
    consistent header (e.g. a singular `srow_z`), which nibabel itself would refuse."""
    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    raw = img.to_bytes()
    if header_fields:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
        for key, value in header_fields.items():
            header[key] = value
        raw = header.binaryblock + raw[len(header.binaryblock):]
    return gzip.compress(raw, mtime=0) if gz else raw


def write_image(path: Path, data: np.ndarray | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(image_data() if data is None else data, **options))
    return path


def make_dataset(root: Path, units: dict[str, Iterable[str]],
                 description: dict | None = None) -> Path:
    """A raw BIDS dataset: `units` maps `sub[/ses]` to the suffixes written in its anat/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        description or {"Name": "reliability", "BIDSVersion": "1.10.0",
                        "DatasetType": "raw"}))
    (root / "README").write_text("reliability test dataset\n" * 5)
    for key, suffixes in units.items():
        sub, _, ses = key.partition("/")
        folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        folder.mkdir(parents=True, exist_ok=True)
        for index, suffix in enumerate(suffixes):
            write_image(folder / f"{stem}_{suffix}.nii.gz", image_data(seed=index))
    return root


def anat_file(root: Path, key: str, suffix: str, ext: str = ".nii.gz") -> Path:
    sub, _, ses = key.partition("/")
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    return root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat" / f"{stem}_{suffix}{ext}"


# --------------------------------------------------------------------------- models

def fake_models(root: Path) -> Path:
    """Descriptors for PVS (t1), WMH (t1, flair) and CMB (swi) whose fold files are placeholder
    bytes: valid and checksummed, never loaded by cases that stop before inference."""
    for target, modalities in (("PVS", ["t1"]), ("WMH", ["t1", "flair"]), ("CMB", ["swi"])):
        folder = root / f"{target}-fake"
        folder.mkdir(parents=True, exist_ok=True)
        fold = folder / "fold_0.bin"
        fold.write_bytes(f"placeholder {target}".encode())
        (folder / f"model_info_{target.lower()}.json").write_text(json.dumps({
            "version": "v0", "target": target, "modalities": modalities, "demo": True,
            "files": [{"name": fold.name, "md5": md5_of_path(fold)}]}))
    return root


# --------------------------------------------------------------------------- the input tree

def tree_state(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash, link target or `dir`, and mode."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            kind = f"link:{os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            kind = "dir"
        else:
            kind = hashlib.sha256(path.read_bytes()).hexdigest()  # root reads any mode here
        state[str(path.relative_to(root))] = f"{kind}:{oct(info.st_mode)}"
    return state


def freeze(root: Path) -> None:
    """Make the input tree read-only (folders keep their other permission bits)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)


# --------------------------------------------------------------------------- runs

@dataclass
class Result:
    code: int
    out: str
    err: str


def run_inprocess(capfd, *argv: object) -> Result:
    """`shiva-bids ARGV` in this process (as root: permissions are not enforced here)."""
    capfd.readouterr()
    code = main([str(a) for a in argv])
    captured = capfd.readouterr()
    return Result(code, captured.out, captured.err)


@lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, ...] | None:
    """The command prefix that makes a subprocess obey file permissions: none for an ordinary
    user, setpriv without capabilities for root; None when root cannot drop them here."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (setpriv, "--inh-caps=-all", "--bounding-set=-all")
    probe = subprocess.run([*prefix, "sh", "-c", "grep -q '^CapEff:\\s*0*$' /proc/self/status"],
                           capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else None


def needs_isolation() -> tuple[str, ...]:
    prefix = isolation_prefix()
    if prefix is None:
        pytest.skip("running as root without a way to drop capabilities (setpriv missing or "
                    "not permitted): file permissions cannot be tested")
    return prefix


def run_isolated(*argv: object, cwd: Path | None = None, env: dict | None = None,
                 timeout: float = 300) -> Result:
    """`python -m shiva_bids ARGV` in a subprocess that obeys file permissions."""
    prefix = needs_isolation()
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the app's own default is under test
    done = subprocess.run([*prefix, sys.executable, "-m", "shiva_bids", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


# --------------------------------------------------------------------------- small disks

@contextlib.contextmanager
def small_disk(path: Path, size_kib: int, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size_kib` KiB at `path` (skips where this process cannot mount)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a small disk")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)


# --------------------------------------------------------------------------- checks

def assert_clean_failure(result: Result, code: int, name: str, phrase: str) -> None:
    """The documented code; exactly one line of stderr names the file (or folder) `name`,
    and it says `phrase`; no traceback; no TensorFlow start-up noise."""
    assert result.code == code, (result.code, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    assert not [line for line in result.err.splitlines() if any(n in line for n in TF_NOISE)]
    naming = [line for line in result.err.splitlines() if name in line]
    assert len(naming) == 1, (name, result.err[-3000:])
    assert phrase.lower() in naming[0].lower(), (phrase, naming[0])


def looks_complete(output_dir: Path, group: bool = True) -> list[Path]:
    """Files that would pass for results: unit summaries, unit reports, derivative images and
    tables of a unit, and (`group`) group tables. Temporary files are hidden (`.name.tmp`)
    and excluded."""
    if not output_dir.is_dir():
        return []
    found = list(output_dir.glob("sub-*/**/*_summary.json"))
    found += output_dir.glob("sub-*.html")
    found += [p for p in output_dir.glob("sub-*/**/anat/*") if not p.name.startswith(".")]
    found += output_dir.glob("group/*.tsv") if group else []
    return sorted(found)


def leftovers(output_dir: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes."""
    return sorted(p for p in output_dir.rglob(".*.tmp*")) if output_dir.is_dir() else []
