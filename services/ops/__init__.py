"""Operator tools: replay a service's history, inspect and redrive dead letters, consumer lag."""
