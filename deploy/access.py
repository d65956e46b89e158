"""`spb-deploy revoke` and `spb-deploy bridge`, and the registration of households that join
a running community: changing who may use the bus and the ledger after provisioning."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from broker import secure
from broker.args import broker_url, tcp_port, tls_broker
from broker.clock import wall_ms
from broker.keys import KeyFileError, fsync_dir, load_key, write_file
from broker.outcome import Expect, bus_client
from deploy.bus import OPERATOR, Revoked, add_bridge, bridged_dirs, broker_dir, meter_id_arg, refresh_bus, revoke
from deploy.provision import DEFAULT_VALID_DAYS, Community
from ledger import operator
from ledger.genesis import NO_SOURCE, Genesis
from wire import topics
from wire.messages import DevCert, Register, Revoke, open_message

REVOCATIONS = "revocations"
REGISTRATIONS = "registrations"  # DIR/registrations/<account id>.cbor: each new household's `register`
APPLIED = ".applied"  # ... renamed <account id>.applied.cbor once the ledger applied it
TIMEOUT_S = 30


def revoke_meter(root: Path, meter_id: str, now_ms: int) -> tuple[Revoked, bytes, list[Path]]:
    """Revoke a meter everywhere it can be: CRL and ACL of every broker dir, a CA-signed
    `revoke` message for the ledger (kept in DIR/revocations/, so running this again sends
    the very same bytes), and a SIGHUP to each broker of DIR that is running.

    Returns the revocation, the message, and the broker dirs whose Mosquitto re-read its
    CRL and ACL.
    """
    entry = revoke(root, meter_id, now_ms)
    refresh_bus(root, now_ms, DEFAULT_VALID_DAYS)
    path = root / REVOCATIONS / f"{meter_id}.cbor"
    if not path.exists():
        ca = load_key(root / "ca" / "ca.key")
        cert = open_message((root / "meters" / meter_id / "devcert.cbor").read_bytes(), DevCert).body
        message = Revoke(meter=meter_id, pk=cert.pk, iss=bytes(ca.verify_key), t=entry.t).sign(ca)
        path.parent.mkdir(exist_ok=True)
        write_file(path, message, 0o644, replace=False)
    return entry, path.read_bytes(), reload_brokers(root)


def reload_brokers(root: Path) -> list[Path]:
    """SIGHUP every broker of DIR running on this host, so it re-reads its ACL and CRL
    (Mosquitto reloads acl_file and crlfile on SIGHUP); the broker dirs that were running."""
    homes = [broker_dir(root), *bridged_dirs(root)]
    return [home for home in homes if _reload(home / "data" / secure.PID_NAME)]


def _reload(pid_file: Path) -> bool:
    """SIGHUP the Mosquitto whose pid `pid_file` holds, if it is running; whether it was."""
    try:
        pid = int(pid_file.read_text())
        if Path(f"/proc/{pid}/comm").read_text().strip() != "mosquitto":
            return False  # a stale pid file: the number now belongs to someone else
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # the broker runs as another user: the revocation must still go on
        print(
            f"spb-deploy: not allowed to signal the broker of {pid_file}; reload it yourself "
            "(systemctl reload spb-broker)",
            file=sys.stderr,
        )
        return False
    return True


def publish_revocation(root: Path, message: bytes, url) -> None:
    """Send the revocation to the ledger over the bus as the operator.

    Done once the broker passed it on: the operator reads its own message back. A PUBACK
    proves nothing, since Mosquitto acknowledges a publish its ACL denied.
    """
    echoed = threading.Event()
    client = bus_client(url, OPERATOR, root / OPERATOR)

    def on_revoke(_topic: str, payload: bytes, _retained: bool) -> None:
        if payload == message:
            echoed.set()

    client.subscribe(topics.TX_REVOKE, on_revoke)
    client.connect()
    try:
        if not client.wait_connected(TIMEOUT_S):
            raise OSError(f"cannot connect to {url.host}:{url.port} as {OPERATOR} within {TIMEOUT_S} s")
        client.publish(topics.TX_REVOKE, message)
        if not echoed.wait(TIMEOUT_S):
            raise OSError(
                f"the broker at {url.host}:{url.port} did not pass the revocation on within {TIMEOUT_S} s: "
                "is it the community's TLS listener? Run this again to resend it"
            )
    finally:
        client.close()


def registrations(root: Path, community: Community, genesis: Genesis, now_ms: int) -> list[tuple[str, Expect]]:
    """The `register` of every household the genesis does not hold (docs/PROTOCOL.md §10):
    its account and its meter's devcert and source, signed by the operator key, by account id.

    Kept in DIR/registrations/, so every run sends the very same bytes until the ledger
    applied them (`mark_applied`): it applies one once, and answers a copy `duplicate`,
    which means done.
    """
    genesis_meters = {m.meter for m in genesis.market.meters} if genesis.market is not None else set()
    genesis_accounts = {pk for pk, _ in genesis.accounts}
    meters = {m.id: m for m in community.meters}
    key = None
    out = []
    for account in community.accounts:
        pk = bytes.fromhex(account.pk)
        if account.meter in genesis_meters or (account.meter is None and pk in genesis_accounts):
            continue
        path = root / REGISTRATIONS / f"{account.id}.cbor"
        opens = pk not in genesis_accounts
        if applied_path(root, account.id).exists():  # its meters stay with it through rotations
            continue
        try:
            raw = path.read_bytes()
            if open_message(raw, Register).body.account == pk:
                out.append((account.id, operator.registered(raw, opens)))
                continue
        except FileNotFoundError:
            pass
        key = key or load_key(operator.operator_key_path(root))
        certs = []
        if account.meter is not None:
            meter = meters[account.meter]
            cert = (root / "meters" / meter.id / "devcert.cbor").read_bytes()
            certs.append((cert, "" if meter.source in (None, NO_SOURCE) else meter.source))
        expect = operator.register(key, pk, certs, now_ms, opens)
        path.parent.mkdir(exist_ok=True)
        write_file(path, expect.message, 0o644, replace=True)
        out.append((account.id, expect))
    return out


def applied_path(root: Path, account_id: str) -> Path:
    return root / REGISTRATIONS / f"{account_id}{APPLIED}.cbor"


def mark_applied(root: Path, account_id: str) -> None:
    """The ledger applied this household's `register`: later runs send it no more."""
    os.replace(root / REGISTRATIONS / f"{account_id}.cbor", applied_path(root, account_id))
    fsync_dir(root / REGISTRATIONS)


def add_revoke(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "revoke",
        help="refuse a meter on the bus and its CoEs at the ledger",
        description="Add METER_ID to DIR/revoked.toml, rewrite the CRL and ACLs, "
        "signal running brokers of DIR, and sign a revocation for the ledger.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("meter", type=meter_id_arg, metavar="METER_ID")
    p.add_argument(
        "--broker",
        type=broker_url,
        metavar="URL",
        help="also send the revocation to the ledger through this broker: mqtts://HOST:PORT "
        "as DIR/operator, or HOST:PORT for plain MQTT (development)",
    )
    p.set_defaults(run=_run_revoke, expected=(OSError, KeyFileError, ValueError))


def _run_revoke(args: argparse.Namespace) -> int:
    entry, message, reloaded = revoke_meter(args.dir, args.meter, wall_ms())
    print(f"revoked    {args.meter} at {entry.t} (certificate serials {', '.join(entry.serials) or 'none'})")
    print(f"brokers    {', '.join(str(h) for h in reloaded) or 'none running here'} re-read the CRL and ACL")
    print(f"ledger     {args.dir / REVOCATIONS / (args.meter + '.cbor')}")
    if args.broker:
        publish_revocation(args.dir, message, args.broker)
        print(f"sent       to {topics.TX_REVOKE} on {args.broker.host}:{args.broker.port}")
    return 0


def add_bridge_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bridge",
        help="add a second broker bridged to the main one",
        description="Write DIR/brokers/NAME: a Mosquitto config with the community's "
        "ACL that bridges the whole topic tree to the main broker over TLS.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", type=tls_broker, required=True, metavar="HOST:PORT", help="the main broker's TLS listener")
    p.add_argument(
        "--tls-port",
        type=tcp_port,
        default=secure.TLS_PORT,
        metavar="PORT",
        help=f"this broker's own TLS port (default {secure.TLS_PORT})",
    )
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name or address meters reach this broker by (repeat; default localhost and loopback)",
    )
    p.set_defaults(run=_run_bridge, expected=(OSError, KeyFileError, ValueError))


def _run_bridge(args: argparse.Namespace) -> int:
    to = f"{args.to.host}:{args.to.port}"
    add_bridge(args.dir, args.name, to, args.tls_port, tuple(args.host))
    refresh_bus(args.dir, wall_ms(), DEFAULT_VALID_DAYS)
    print(f"broker     {broker_dir(args.dir, args.name)} bridged to {to}")
    print(
        f"run        spb-broker run --config-dir {broker_dir(args.dir, args.name)}, and restart the main broker "
        "(its ACL now admits the bridge)"
    )
    return 0
