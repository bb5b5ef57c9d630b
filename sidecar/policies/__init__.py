"""Route policies the engine applies: retry (policy, budget, backoff) and header edits. Pure values."""
