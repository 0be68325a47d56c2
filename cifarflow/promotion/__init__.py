"""Champion/challenger: McNemar's test, the decision, and the registry of champions."""
