"""spb-monitor mirror (being written)."""

from __future__ import annotations

import argparse

IDENTITY = "mirror"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
