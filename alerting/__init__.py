"""Alert rules (pure) and their delivery adapters."""
