"""User-level differential privacy for federated rounds: noise, accounting, calibration, the ledger."""
