"""Champion/challenger: McNemar's test, the decision, the rollback rule and the report section."""
