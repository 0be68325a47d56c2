"""The run report: report.md, metrics.json and the model card."""
