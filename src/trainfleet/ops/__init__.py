"""One module per user operation: typed inputs to a typed result. The CLI calls these."""
