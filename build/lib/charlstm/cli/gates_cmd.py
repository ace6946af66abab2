"""The `charlstm gates` command (placeholder until its issue lands)."""
