"""spb-broker: run the bus's MQTT broker in the foreground until SIGINT or SIGTERM; exit 1 if the broker dies first."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from broker.runtime import Broker, start_broker
from broker.secure import start_secure

DEFAULT_PORT = 1883
WATCH_INTERVAL = 0.5
"""Seconds between checks that the broker is still running."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spb-broker", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run a broker until interrupted")
    run.add_argument(
        "--config-dir",
        type=Path,
        metavar="DIR",
        help="a provisioned broker dir (DIR/broker of `spb-deploy provision`): Mosquitto with mutual "
        "TLS and the community's ACL; without it, an open development broker on 127.0.0.1",
    )
    run.add_argument(
        "--port",
        type=int,
        help=f"the TLS port with --config-dir (default: its broker.toml's), else the plain port on "
        f"127.0.0.1 (default {DEFAULT_PORT})",
    )
    run.add_argument(
        "--local-port",
        type=int,
        metavar="PORT",
        help="with --config-dir: also a plain listener on 127.0.0.1 where anonymous clients may only read",
    )
    run.add_argument(
        "--embedded", action="store_true", help="use the in-process amqtt broker even if mosquitto is installed"
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help="config, persistence and log directory (default: DIR/data with --config-dir, else a temporary one)",
    )
    run.set_defaults(command=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.config_dir and args.embedded:
        print(
            "spb-broker: --embedded cannot do TLS client certificates; drop --config-dir or --embedded", file=sys.stderr
        )
        return 2
    durable = args.data_dir or args.config_dir
    data_dir = contextlib.nullcontext(args.data_dir) if durable else tempfile.TemporaryDirectory(prefix="spb-broker-")
    with data_dir as directory:
        broker: Broker
        try:
            if args.config_dir:
                # durable, so directory is args.data_dir; None lets start_secure use DIR/data
                broker = start_secure(args.config_dir, args.port, args.local_port, args.data_dir)
            else:
                broker = start_broker(args.port or DEFAULT_PORT, directory, embedded=args.embedded)
        except Exception as error:  # port taken, mosquitto refusing its config, amqtt missing...
            print(f"spb-broker: cannot start a broker: {error}", file=sys.stderr)
            return 1
        with broker:
            print(f"spb-broker: {broker.kind} listening on {broker.url}", flush=True)
            while not stop.wait(WATCH_INTERVAL):
                if not broker.running():
                    print(f"spb-broker: {broker.kind} exited unexpectedly ({broker.exit_report()})", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
