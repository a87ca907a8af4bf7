"""Adapters: the concrete implementations of the ports in shared.ports."""
