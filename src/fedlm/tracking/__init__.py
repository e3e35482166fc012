"""Experiment tracking: a run's config, per-round metrics and final adapter, also written where users already look."""
