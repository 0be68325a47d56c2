"""Hyper-parameter sweeps: the search space, trials and the leaderboard."""
