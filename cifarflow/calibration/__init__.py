"""Calibration: whether a model's probabilities mean what they say (ECE, NLL, Brier), and temperature
scaling, the one-parameter fix that becomes part of the model (Guo et al., 2017)."""
