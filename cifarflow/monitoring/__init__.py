"""Watching the champion at work: the prediction log, drift signals, the monitor\x27s report."""
