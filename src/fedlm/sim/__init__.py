"""The in-process simulation: the round engine and the client driven in one process."""
