"""SHIVA models: descriptors, discovery and choice, checksums, loaders, ensemble predictor.

Importing this package does not import TensorFlow; loading a model does.
"""
from shiva_bids.models.checksums import md5_of_path, verify_model_files
from shiva_bids.models.descriptors import (ModelDescriptor, ModelFile, load_descriptor,
                                           resolve_model_file)
from shiva_bids.models.ensemble import EnsembleOutput, EnsemblePredictor
from shiva_bids.models.selection import discover_descriptors, select_descriptors

__all__ = ["EnsembleOutput", "EnsemblePredictor", "ModelDescriptor", "ModelFile",
           "discover_descriptors", "load_descriptor", "md5_of_path", "resolve_model_file",
           "select_descriptors", "verify_model_files"]
