"""Small shared utilities (optional-dependency probes)."""
