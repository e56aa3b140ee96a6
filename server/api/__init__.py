"""The HTTP API (quart-trio on hypercorn): thin views that parse, call a handler, present."""
