"""spb-monitor: the community as its monitoring subscribers see it, verified (issue 16)."""
