"""The sans-IO exchange: one request/response as a state machine of events in, actions out."""
