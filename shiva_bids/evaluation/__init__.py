"""Accuracy against reference masks: voxel Dice and cluster detection (docs/demo.md)."""
