"""Meter firmware: sampling, signing and publishing what a household imports and exports."""

FIRMWARE_VERSION = "0.1.0"
