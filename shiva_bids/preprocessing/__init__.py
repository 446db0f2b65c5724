"""Preprocessing as SHIVA expects it (reference/SHIVA.md §5-§7), with ANTsPy, and the exact
way back to native space. Public API: `preprocess_unit`, `PreprocOptions`, `PreprocessedUnit`,
`ModelSpace` (see docs/preprocessing.md)."""
from shiva_bids.preprocessing.pipeline import (ModelSpace, PreprocessedUnit, PreprocOptions,
                                               preprocess_unit)

__all__ = ["ModelSpace", "PreprocessedUnit", "PreprocOptions", "preprocess_unit"]
