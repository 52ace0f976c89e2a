"""Executor tests: the fill model, the paper broker, the service and its routes."""
