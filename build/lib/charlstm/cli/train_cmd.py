"""The `charlstm train` command (placeholder until its issue lands)."""
