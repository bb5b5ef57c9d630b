"""Push: store changes → debounced flushes → refreshed views → woken streams (bounded, fair)."""
