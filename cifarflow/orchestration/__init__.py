"""Orchestration: stage specs, exact cache keys, the runner that reuses persisted outputs, plans, artifacts."""
