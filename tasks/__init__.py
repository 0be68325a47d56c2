"""The pipeline's Prefect tasks, one module per stage: thin wrappers over `cifarflow`'s plain functions.
Each is called through `cifarflow.orchestration.runner.StageRunner`, which hands it the stage's cache key."""
