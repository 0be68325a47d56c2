"""Evaluation: predictions (with test-time augmentation), metrics and plots."""
