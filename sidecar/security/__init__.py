"""Inbound security decisions: authorization policies and peer-authentication modes."""
