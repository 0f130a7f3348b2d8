"""Command-line applications (top of the layers: jobs -> flows -> connectors -> alerting ->
models)."""
