"""Flashing meters and provisioning communities."""
