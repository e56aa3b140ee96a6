"""Device simulator, scenarios and report for sizing obrol deployments."""
