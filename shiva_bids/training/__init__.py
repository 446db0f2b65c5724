"""Training of the bundled demo models on synthetic phantoms (docs/demo.md)."""
