"""The `fedlm` command line: one module per command group."""
