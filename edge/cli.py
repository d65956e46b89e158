"""`spb-meter`: the meter firmware's command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from edge.meter import MeterNode
from edge.state_dir import MeterIdentity


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


MAX_W = 1_000_000  # far above any household connection; keeps simulated readings sane


def watts(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of watts") from None
    if abs(value) > MAX_W:
        raise argparse.ArgumentTypeError(f"{value} W is beyond ±{MAX_W} W")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        identity = MeterIdentity.load(args.state_dir)
    except (OSError, KeyError, ValueError) as exc:
        print(f"spb-meter: {args.state_dir} is not a meter state dir from `spb-deploy provision`: {exc}",
              file=sys.stderr)
        return 1
    host, port = args.broker
    node = MeterNode(identity, host, port, power=lambda: args.fake_w, reading_s=args.reading_s)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.run(stop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spb-meter", description="Run a household meter.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sample, sign and publish until SIGINT/SIGTERM")
    run.add_argument("--state-dir", type=Path, required=True, metavar="DIR",
                     help="the meter's dir from `spb-deploy provision` (DIR/meters/<id>)")
    run.add_argument("--broker", type=host_port, required=True, metavar="HOST:PORT")
    run.add_argument("--fake-w", type=watts, required=True, metavar="W",
                     help="simulated constant power in W (+import, -export); the ADC comes with the meter issue")
    run.add_argument("--reading-s", type=positive_seconds, default=10.0, metavar="S", help="seconds between readings")
    run.set_defaults(run=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
