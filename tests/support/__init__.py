"""Test helpers: infrastructure, event builders, service runners."""
