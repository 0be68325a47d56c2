"""Champion/challenger: McNemar's test, the decision, the rollback rule and the report section; the
versions and the champion alias are the model registry's (`cifarflow.registry.api`)."""
