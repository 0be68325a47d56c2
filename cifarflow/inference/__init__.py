"""Using a trained model: loading (a registry version, the champion or a path) and scoring image files in batches."""
