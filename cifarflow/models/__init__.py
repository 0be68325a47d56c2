"""Model presets (the registry), their networks and the input layer that applies the fitted transform."""
