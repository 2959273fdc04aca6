"""Served systems: OpenAI-compatible endpoints timed from outside (docs/endpoints.md). Imports no torch."""
