"""The versioned model registry: numbered versions, the `champion` alias, the exported artifact and its smoke test."""
