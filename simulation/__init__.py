"""Deterministic discrete-event fleet simulator driving the real gossip core."""
