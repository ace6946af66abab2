"""The `charlstm eval` command (placeholder until its issue lands)."""
