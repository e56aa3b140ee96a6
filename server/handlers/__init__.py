"""Business rules, one module per domain, between the REST layer and the stores."""
