"""The coordinator side: cohort selection and the pure round engine."""
