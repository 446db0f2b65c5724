"""`InputSet`: the images found for one participant/session (the unit of work)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Roles of input images; the SHIVA descriptors' modality names map onto them
# (reference/SHIVA.md §2.1: "t1", "flair", "swi", also "t2"/"t2s").
ROLES: tuple[str, ...] = ("t1w", "flair", "swi", "t2w")
MODALITY_TO_ROLE: dict[str, str] = {"t1": "t1w", "flair": "flair", "swi": "swi", "t2s": "swi",
                                    "t2": "t2w"}


def input_roles(channels: set[str], img1_role: str = "t1w") -> set[str]:
    """The input roles that model channels read: the main image (`img1_role`: the T1w, or the
    T2w when it replaces the T1w) and the image of every other channel."""
    return {img1_role} | {MODALITY_TO_ROLE[c] for c in channels if c != "t1"}


def unit_id(subject: str, session: str | None) -> str:
    """`sub-X[_ses-Y]`: the name of a unit in logs, reports and crash files."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def unit_entities(subject: str, session: str | None) -> dict[str, str]:
    """Source entities of a unit for derivative names (`sub`, `ses`)."""
    return {"sub": subject, **({"ses": session} if session else {})}


class UnitNames:
    """`unit_id` and `entities` of anything with `subject` and `session` attributes."""

    subject: str
    session: str | None

    @property
    def unit_id(self) -> str:
        return unit_id(self.subject, self.session)

    @property
    def entities(self) -> dict[str, str]:
        return unit_entities(self.subject, self.session)


@dataclass(frozen=True)
class InputSet(UnitNames):
    """Paths of one unit's inputs. Missing roles are None.

    `t1w`, `flair`, `swi` (SWI or T2starw), `t2w` come from the raw dataset; `brain_mask` and
    `dseg` from `--derivatives` datasets. `choices` records, per role, why this file was picked
    among several candidates (runs, acquisitions), and for `brain_mask`/`dseg` which
    `--derivatives` dataset and folder it came from, for logs and sidecars (set by
    :mod:`shiva_bids.bids.discovery`).
    """

    subject: str
    session: str | None = None
    t1w: Path | None = None
    flair: Path | None = None
    swi: Path | None = None
    t2w: Path | None = None
    brain_mask: Path | None = None
    dseg: Path | None = None
    choices: dict[str, str] = field(default_factory=dict)

    def image(self, role: str) -> Path | None:
        """Path of the image with this role (`t1w`, `flair`, `swi`, `t2w`)."""
        if role not in ROLES:
            raise KeyError(role)
        return getattr(self, role)

    def has(self, role: str) -> bool:
        return self.image(role) is not None
