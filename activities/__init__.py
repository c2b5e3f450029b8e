"""Activities: every piece of I/O a workflow needs, each idempotent under retry."""
