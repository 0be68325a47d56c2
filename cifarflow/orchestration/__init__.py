"""Orchestration: the stage graph, exact cache keys, the one reuse mechanism (the runner), plans, artifacts, events."""
