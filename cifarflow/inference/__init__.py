"""Using a trained model: load it (a registry version, the champion or a path), score image files in
batches, and the pieces the HTTP service shares with batch prediction."""
