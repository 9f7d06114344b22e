"""Subcommands of the ``samplescope`` CLI, one module per group."""
