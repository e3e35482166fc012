"""The update pipeline: small transforms between a client delta and a new global."""
