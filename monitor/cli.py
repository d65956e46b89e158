"""spb-monitor: the community as its monitoring subscribers see it, every message verified.

  spb-monitor watch   DIR --broker URL              a live terminal view
  spb-monitor mirror  DIR --broker URL              verified JSON on spb-json/v1/..., Home Assistant discovery
  spb-monitor metrics DIR --broker URL --port P     a Prometheus exporter of the community
  spb-monitor web     DIR --broker URL --port P     the community dashboard in the browser

DIR is the community dir (its genesis.cbor is the trust anchor: CA and validator keys). URL
is mqtts://HOST:PORT with a monitoring identity's certificate (DIR/monitoring/NAME, chosen
with --identity; each running monitor needs its own, since the broker makes the certificate's
name the client id), or mqtt://127.0.0.1:PORT for the broker's read-only loopback listener.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from broker.args import BROKER_HELP, broker_url
from ledger.genesis import GenesisError
from monitor import exporter, mirror, watch, web
from monitor.feed import DEFAULT_IDENTITY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spb-monitor", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module, name, help_text in (
        (watch, "watch", "a live terminal view of meters, trades, the market and validators"),
        (mirror, "mirror", "republish each verified message as JSON, with Home Assistant discovery"),
        (exporter, "metrics", "serve the community's Prometheus metrics"),
        (web, "web", "serve the community dashboard"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("dir", type=Path, metavar="DIR", help="the community dir (genesis.cbor, certificates)")
        p.add_argument("--broker", type=broker_url, required=True, metavar="URL", help=BROKER_HELP)
        p.add_argument(
            "--identity",
            default=mirror.IDENTITY if module is mirror else DEFAULT_IDENTITY,
            metavar="NAME",
            help="the monitoring identity for mqtts:// (DIR/monitoring/NAME; the mirror's is DIR/mirror)",
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.run(args))
    except (OSError, GenesisError) as exc:
        print(f"spb-monitor: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
