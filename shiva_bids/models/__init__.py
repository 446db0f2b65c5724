"""SHIVA models: descriptors, discovery and choice, checksums, loaders, ensemble predictor.

Importing this package does not import TensorFlow; loading a model does.
"""
from shiva_bids.models.checksums import md5_of_path, verify_model_files
from shiva_bids.models.descriptors import (BrokenDescriptor, ModelDescriptor, ModelFile,
                                           load_descriptor, read_descriptor,
                                           resolve_model_file)
from shiva_bids.models.ensemble import EnsembleOutput, EnsemblePredictor
from shiva_bids.models.selection import (MarkerChoice, ModelScan, choose_models,
                                         discover_descriptors, scan_models_dir,
                                         select_descriptors, warn_unused)

__all__ = ["BrokenDescriptor", "EnsembleOutput", "EnsemblePredictor", "MarkerChoice",
           "ModelDescriptor", "ModelFile", "ModelScan", "choose_models", "discover_descriptors",
           "load_descriptor", "md5_of_path", "read_descriptor", "resolve_model_file",
           "scan_models_dir", "select_descriptors", "verify_model_files", "warn_unused"]
