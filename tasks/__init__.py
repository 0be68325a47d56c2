"""CIFAR-10 pipeline stages: plain functions (one module per concern) and their Prefect tasks (`tasks.stages`)."""
