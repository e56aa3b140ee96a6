"""The running service: HTTP API, gateway, hub, CLI."""
