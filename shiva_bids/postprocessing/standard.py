"""Standard regional loads: the clinical groupings of each marker's region scheme.

The schemes (reference/SHIVA.md §9.3) have up to 29 regions per hemisphere; clinicians read a
few sums of them, left and right together. These become the group table's standard columns
(`<MARKER>_<group>_count` and `<MARKER>_<group>_volume_mm3`) and the participant report's
"standard regions" line:

* PVS: basal ganglia ("Basal Gang." of the PVS scheme: basal ganglia, thalamus, insula,
  internal/external capsule) and centrum semiovale ("Deep WM" of the PVS scheme: the lobar
  white matter, with the cortex and corpus callosum as SHiVAi counts them);
* WMH: periventricular ("PV WM"), deep ("Deep WM") and juxtacortical ("Shallow WM") white
  matter, and infratentorial (cerebellum, brainstem);
* CMB and LAC, the Microbleed Anatomical Rating Scale's three classes (Gregoire et al. 2009,
  Neurology 73:1759): lobar (frontal, parietal, temporal, occipital, insula, with the
  hippocampus as mesial temporal cortex and the unparcellated "Lobar" cortex), deep (basal
  ganglia, thalamus, ventral diencephalon, internal/external capsule, corpus callosum, deep and
  periventricular white matter) and infratentorial (cerebellum, brainstem).

A unit whose regions are whole-brain only has no standard values (n/a, not 0).
"""
from __future__ import annotations

from typing import Mapping

_MARS = (
    ("lobar", "lobar (MARS: frontal, parietal, temporal, occipital, insula, hippocampus)",
     ("Frontal", "Parietal", "Temporal", "Occipital", "Insula", "Hippoc.", "Lobar")),
    ("deep", "deep (MARS: basal ganglia, thalamus, ventral DC, internal/external capsule, "
             "corpus callosum, deep and periventricular WM)",
     ("Basal Gang.", "Thalamus", "Ventral DC", "Int. Caps.", "Ext. Caps.", "Corp. Call.",
      "D&PV WM")),
    ("infratentorial", "infratentorial (MARS: cerebellum, brainstem)",
     ("Cerebellum", "Brainstem")),
)
# marker -> (column group, what it is, scheme region names without the Left/Right prefix)
STANDARD_GROUPS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "PVS": (
        ("basal_ganglia", "basal ganglia (PVS scheme 'Basal Gang.': basal ganglia, thalamus, "
                          "insula, internal/external capsule)", ("Basal Gang.",)),
        ("centrum_semiovale", "centrum semiovale (PVS scheme 'Deep WM': lobar white matter, "
                              "with cortex and corpus callosum as SHiVAi counts them)",
         ("Deep WM",)),
    ),
    "WMH": (
        ("periventricular", "periventricular white matter (WMH scheme 'PV WM')", ("PV WM",)),
        ("deep", "deep white matter (WMH scheme 'Deep WM', with basal ganglia and thalamus)",
         ("Deep WM",)),
        ("juxtacortical", "juxtacortical white matter and cortex (WMH scheme 'Shallow WM')",
         ("Shallow WM",)),
        ("infratentorial", "infratentorial (cerebellum, brainstem)",
         ("Cerebellar", "Brainstem")),
    ),
    "CMB": _MARS,
    "LAC": _MARS,
}


def _unsided(region: str) -> str:
    for side in ("Left ", "Right "):
        if region.startswith(side):
            return region[len(side):]
    return region


def standard_values(marker: str, regions: Mapping[str, Mapping[str, object]]
                    ) -> dict[str, int | float | None]:
    """`{<group>_count, <group>_volume_mm3}` of one marker from its per-region statistics
    (`MarkerSummary.regions`: region name -> {n_clusters, total_volume_mm3, ...}); None for
    every group when the statistics are whole-brain only."""
    sided = {name: stats for name, stats in regions.items() if name.lower() != "whole brain"}
    out: dict[str, int | float | None] = {}
    for group, _, members in STANDARD_GROUPS.get(marker, ()):
        chosen = [stats for name, stats in sided.items() if _unsided(name) in members]
        if not sided:
            out[f"{group}_count"] = out[f"{group}_volume_mm3"] = None
            continue
        out[f"{group}_count"] = int(sum(int(s.get("n_clusters") or 0) for s in chosen))
        out[f"{group}_volume_mm3"] = round(float(sum(float(s.get("total_volume_mm3") or 0.0)
                                                     for s in chosen)), 4)
    return out


def standard_descriptions() -> dict[str, dict[str, str]]:
    """Data-dictionary entries of every standard column (`<MARKER>_<group>_...`)."""
    out: dict[str, dict[str, str]] = {}
    for marker, groups in STANDARD_GROUPS.items():
        for group, what, _ in groups:
            out[f"{marker}_{group}_count"] = {
                "Description": f"Number of {marker} clusters in the {what}, left and right "
                               "together; n/a when the unit has whole-brain statistics only."}
            out[f"{marker}_{group}_volume_mm3"] = {
                "Description": f"Total {marker} volume in the {what}, left and right "
                               "together; n/a when the unit has whole-brain statistics only.",
                "Units": "mm^3"}
    return out
