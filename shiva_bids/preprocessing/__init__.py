"""Preprocessing as SHIVA expects it (reference/SHIVA.md §5-§7), with ANTsPy, and the exact
way back to native space. Public API: `preprocess_unit`, `PreprocOptions`, `PreprocessedUnit`,
`ModelSpace` (see docs/preprocessing.md).

The API is imported on first use, so that `shiva_bids.preprocessing.headers` (the input
checks run before anything else) does not pull in ANTsPy.
"""
from __future__ import annotations

__all__ = ["ModelSpace", "PreprocessedUnit", "PreprocOptions", "preprocess_unit"]


def __getattr__(name: str):
    if name in __all__:
        from shiva_bids.preprocessing import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
