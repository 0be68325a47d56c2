"""Checking a dataset version before anything trains on it (the validate stage)."""
