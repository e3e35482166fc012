"""Drift and anomaly monitoring: per-round statistics of the cohort's updates, and alerts from thresholds."""
