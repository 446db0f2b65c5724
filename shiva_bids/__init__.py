"""shiva-bids: SHIVA small-vessel-disease markers (PVS, WMH, CMB, LAC) as a BIDS App."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path


def _read_version() -> str:
    """The one version string: the top-level `version` file (source tree, editable install,
    container), else the installed distribution's metadata (built from that same file)."""
    source_file = Path(__file__).resolve().parent.parent / "version"
    if source_file.is_file():
        return source_file.read_text().strip()
    try:
        return metadata.version("shiva-bids")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an odd copy
        return "unknown"


__version__ = _read_version()
