"""Turning client updates into a new global adapter."""
