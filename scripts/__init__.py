"""Project scripts (code generators, tool installers)."""
