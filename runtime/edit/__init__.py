"""The low-rank edit a pack entry applies: its activation table, its numpy form, its prompt positions."""
