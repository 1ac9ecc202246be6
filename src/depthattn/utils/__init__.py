"""Small helpers every layer may use: atomic file writes, argument checks, device choice."""
