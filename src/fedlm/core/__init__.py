"""Core types shared by every layer: flat vectors, seeds, tasks and updates."""
