"""Meter firmware: sampling, signing and publishing what a household imports and exports."""

from importlib.metadata import PackageNotFoundError, version

try:
    FIRMWARE_VERSION = version("spb-energy")  # one version, the distribution's
except PackageNotFoundError:  # running from a source tree that was never installed
    FIRMWARE_VERSION = "0+source"
