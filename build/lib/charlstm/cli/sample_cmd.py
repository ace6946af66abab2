"""The `charlstm sample` command (placeholder until its issue lands)."""
