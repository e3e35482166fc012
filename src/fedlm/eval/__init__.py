"""Evaluation of global models: loss, perplexity and next-token accuracy."""
