"""Robustness: the model's accuracy (and calibration) on test images corrupted the way real photos
are, at three severities each, beside its clean accuracy."""
