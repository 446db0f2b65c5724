"""config.json -> the App's settings, and the one-subject BIDS dataset shiva-bids reads.

brainlife passes each input file as a path under a config key (the App's input mapping):

| key       | brainlife datatype  | file            | becomes                                     |
|-----------|---------------------|-----------------|---------------------------------------------|
| `t1`      | neuro/anat/t1w      | t1.nii.gz       | `sub-X[_ses-Y]_T1w.nii.gz` (required)        |
| `flair`   | neuro/anat/flair    | flair.nii.gz    | `sub-X[_ses-Y]_FLAIR.nii.gz` (WMH, LAC)      |
| `t2starw` | neuro/anat/t2starw  | t2starw.nii.gz  | `sub-X[_ses-Y]_T2starw.nii.gz` (CMB)         |
| `mask`    | neuro/mask          | mask.nii.gz     | a brain mask given with `--derivatives`      |

and `_inputs[]` describes the input datasets (`meta.subject`, `meta.session`). brainlife's
generic BIDS export files FLAIR under derivatives, so the App builds the dataset itself: a
`dataset_description.json` and symbolic links to the inputs, nothing copied.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_KEYS = {"t1": "T1w", "flair": "FLAIR", "t2starw": "T2starw"}
NIFTI = (".nii.gz", ".nii")


class ConfigError(ValueError):
    """config.json cannot be used as it is (one line naming the key)."""


@dataclass(frozen=True)
class ParticipantConfig:
    """What one participant run needs, read from config.json."""

    images: dict[str, Path]  # BIDS suffix (T1w, FLAIR, T2starw) -> input file
    mask: Path | None
    models: Path
    subject: str
    session: str | None
    markers: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()  # `--threshold` values, e.g. "PVS=0.4"
    tta: bool = False

    @property
    def unit(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def bids_label(value: Any, prefix: str) -> str:
    """A BIDS label from a brainlife subject/session name: the `sub-`/`ses-` prefix and every
    character that is not a letter or digit removed (`100_307` -> `100307`)."""
    text = str(value or "")
    text = text[len(prefix):] if text.startswith(prefix) else text
    return re.sub(r"[^0-9A-Za-z]", "", text)


def unit_labels(inputs: list[dict]) -> tuple[str, str | None]:
    """(subject, session) from `_inputs`: the entry that carries the `t1` key first."""
    ordered = sorted(inputs, key=lambda entry: "t1" not in entry.get("keys", []))
    for entry in ordered:
        meta = entry.get("meta") or {}
        subject = bids_label(meta.get("subject"), "sub-")
        if subject:
            return subject, bids_label(meta.get("session"), "ses-") or None
    raise ConfigError("_inputs: no input has meta.subject (brainlife sets it for every dataset)")


def _words(value: Any, key: str) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a string such as 'PVS WMH' or a list of strings")


def _file(config: dict, key: str, base: Path, required: bool) -> Path | None:
    value = config.get(key)
    if value in (None, ""):
        if required:
            raise ConfigError(f"{key}: missing (the T1w image is required)")
        return None
    path = (base / str(value)).absolute()
    if not path.name.endswith(NIFTI):
        raise ConfigError(f"{key}: {path} is not a NIfTI file (.nii or .nii.gz)")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    return path


def read_config(path: Path) -> dict:
    """The parsed config.json (a JSON object)."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return config


def participant_config(config: dict, base: Path) -> ParticipantConfig:
    """Check a participant-mode config (paths relative to `base`, the task folder)."""
    images = {suffix: p for key, suffix in IMAGE_KEYS.items()
              if (p := _file(config, key, base, key == "t1")) is not None}
    models = config.get("models")
    if not models or not (base / str(models)).is_dir():
        raise ConfigError(f"models: {models!r} is not a folder; give the folder holding the "
                          "SHIVA model folders and their model_info*.json files")
    subject, session = unit_labels(config.get("_inputs") or [])
    return ParticipantConfig(images=images, mask=_file(config, "mask", base, False),
                             models=(base / str(models)).absolute(), subject=subject,
                             session=session,
                             markers=tuple(m.upper() for m in _words(config.get("markers"),
                                                                     "markers")),
                             thresholds=_words(config.get("thresholds"), "thresholds"),
                             tta=bool(config.get("tta", False)))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _extension(path: Path) -> str:
    return next(ext for ext in NIFTI if path.name.endswith(ext))


def _write_description(root: Path, **fields: Any) -> None:
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "brainlife.io input", "BIDSVersion": "1.10.0", **fields}
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")


def build_bids_tree(config: ParticipantConfig, root: Path) -> Path:
    """`root` as a raw BIDS dataset of one participant (and session): links to the inputs."""
    _write_description(root, DatasetType="raw")
    anat = root / f"sub-{config.subject}" / (f"ses-{config.session}" if config.session
                                            else "") / "anat"
    for suffix, source in config.images.items():
        _link(source, anat / f"{config.unit}_{suffix}{_extension(source)}")
    return root


def build_mask_dataset(config: ParticipantConfig, root: Path) -> Path | None:
    """The `mask` input as a derivative dataset (`desc-brain_mask`), or None without one."""
    if config.mask is None:
        return None
    _write_description(root, DatasetType="derivative",
                       GeneratedBy=[{"Name": "brainlife.io neuro/mask input"}])
    anat = root / f"sub-{config.subject}" / (f"ses-{config.session}" if config.session
                                            else "") / "anat"
    _link(config.mask, anat / f"{config.unit}_desc-brain_mask{_extension(config.mask)}")
    return root
