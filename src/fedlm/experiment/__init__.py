"""`fedlm experiment compare`: federated vs centralized vs local-only LoRA at equal compute."""
