"""Secure aggregation (SecAgg+): the server learns only the sum of the cohort's updates."""
