"""`spb-deploy server`: make a Debian host the community's broker and ledger.

Writes into a root tree (the host's /, or a mounted disk): Mosquitto's certificates, ACLs and
a config rendered for the host's paths, the ledger dir with the genesis and every validator's
keys, their users, hardened units and log limits. The software arrives like on a meter: the
project's wheel, installed by a oneshot unit when the services first start.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from broker import secure
from broker.args import tcp_port
from deploy.bus import broker_dir
from deploy.rootfs import HARDENING, Install, RootfsError, RootTree, build_wheel, journald_limits
from ledger.genesis import GENESIS_FILE

INSTALL = Install(prefix="/opt/spb-energy", extras="", apt=("python3-venv", "mosquitto", "logrotate"))
BROKER_ETC = "/etc/spb-broker"
BROKER_DATA = "/var/lib/spb-broker"
LEDGER = "/var/lib/spb-ledger"
LEDGER_USER = "spb-ledger"
MOSQUITTO = "mosquitto"  # Debian's mosquitto package makes the same user if it is missing
LEDGER_BROKER = "127.0.0.1"  # validators reach the broker on this host by loopback
# Neither broker nor ledger touches hardware or the clock.
NO_DEVICES = "PrivateDevices=yes\nProtectClock=yes\n"


def broker_unit() -> str:
    return f"""\
# Written by `spb-deploy server`; re-running replaces it.
[Unit]
Description=spb-energy broker (Mosquitto, mutual TLS)
Wants=network-online.target {INSTALL.service}
After=network-online.target {INSTALL.service}
StartLimitIntervalSec=0

[Service]
# Debian builds Mosquitto with systemd notification: the ledger starts once it listens.
Type=notify
NotifyAccess=main
ExecStart=/usr/sbin/mosquitto -c {BROKER_ETC}/{secure.CONF_NAME}
# Reloads the CRL, ACL and certificates, and reopens the log (logrotate).
ExecReload=/bin/kill -HUP $MAINPID
User={MOSQUITTO}
Group={MOSQUITTO}
ReadWritePaths={BROKER_DATA}
Restart=always
RestartSec=5
{NO_DEVICES}{HARDENING}
[Install]
WantedBy=multi-user.target
"""


def ledger_unit(port: int) -> str:
    return f"""\
# Written by `spb-deploy server`; re-running replaces it. One instance per validator: spb-ledger@I.
[Unit]
Description=spb-energy ledger, validator %i
# time-sync.target: a validator's clock guard (ledger.clock_guard) catches a jump while it
# runs, not a clock that is already wrong when it starts.
Wants=network-online.target {INSTALL.service} spb-broker.service time-sync.target
After=network-online.target {INSTALL.service} spb-broker.service time-sync.target
StartLimitIntervalSec=0

[Service]
ExecStart={INSTALL.bin("spb-ledger")} run {LEDGER} --broker mqtts://{LEDGER_BROKER}:{port} --validator %i
User={LEDGER_USER}
Group={LEDGER_USER}
ReadWritePaths={LEDGER}
Restart=always
RestartSec=5
{NO_DEVICES}{HARDENING}
[Install]
WantedBy=multi-user.target
"""


LOGROTATE = f"""\
# Written by `spb-deploy server`: Mosquitto logs to a file, which journald's limits do not cover.
{BROKER_DATA}/mosquitto.log {{
    su {MOSQUITTO} {MOSQUITTO}
    weekly
    maxsize 100M
    rotate 8
    compress
    missingok
    notifempty
    postrotate
        systemctl reload spb-broker.service >/dev/null 2>&1 || true
    endscript
}}
"""


def validators(community: Path) -> list[int]:
    """The validators whose keys are in DIR/validators/vI/, in order."""
    found = (p.parent.name[1:] for p in community.glob("validators/v*/validator.key"))
    return sorted(int(i) for i in found if i.isdecimal())


def broker_settings(community: Path) -> secure.BrokerSettings:
    """The main broker's settings, once sure the community has what a server needs."""
    home = broker_dir(community)
    if not (home / secure.SERVER_KEY).is_file() or not (community / GENESIS_FILE).is_file():
        raise RootfsError(
            f"{community} has no broker certificate or no genesis: run "
            "`spb-deploy provision DIR ... --genesis-units U` first"
        )
    settings = secure.BrokerSettings.load(home)
    if LEDGER_BROKER not in settings.hosts:
        raise RootfsError(
            f"the broker's certificate does not name {LEDGER_BROKER}, which the ledger connects "
            f"to; it names {', '.join(settings.hosts)}"
        )
    return settings


def setup_server(community: Path, root: Path, wheel: Path, port: int | None = None) -> RootTree:
    """Write community DIR's broker and ledger into the root tree `root`."""
    settings = broker_settings(community)
    home = broker_dir(community)
    indices = validators(community)
    port = settings.tls_port if port is None else port
    tree = RootTree(root)
    broker = tree.system_user(MOSQUITTO, "/var/lib/mosquitto")
    ledger = tree.system_user(LEDGER_USER, LEDGER)
    broker_owner, ledger_owner = (broker.uid, broker.gid), (ledger.uid, ledger.gid)

    tree.dir(BROKER_ETC)
    tree.copy_files(home, BROKER_ETC, broker_owner, public_owner=(0, 0), skip=(secure.CONF_NAME,))
    conf = secure.mosquitto_conf(settings, Path(BROKER_ETC), Path(BROKER_DATA), port, run_as=MOSQUITTO)
    tree.file(f"{BROKER_ETC}/{secure.CONF_NAME}", conf.encode())
    tree.dir(BROKER_DATA, 0o700, broker_owner)

    tree.dir(LEDGER, 0o700, ledger_owner)
    tree.file(f"{LEDGER}/{GENESIS_FILE}", (community / GENESIS_FILE).read_bytes(), 0o644, ledger_owner)
    tree.dir(f"{LEDGER}/validators", 0o700, ledger_owner)
    for i in indices:
        tree.dir(f"{LEDGER}/validators/v{i}", 0o700, ledger_owner)
        tree.copy_files(community / "validators" / f"v{i}", f"{LEDGER}/validators/v{i}", ledger_owner)

    INSTALL.write(tree, wheel)
    tree.unit("spb-broker.service", broker_unit(), enable=("spb-broker.service",))
    tree.unit("spb-ledger@.service", ledger_unit(port), enable=tuple(f"spb-ledger@{i}.service" for i in indices))
    # Debian's own mosquitto.service would be a second broker, without TLS, on port 1883: masked.
    tree.link("/etc/systemd/system/mosquitto.service", "/dev/null")
    tree.file("/etc/logrotate.d/spb-broker", LOGROTATE.encode())
    tree.file(
        "/etc/systemd/journald.conf.d/spb-energy.conf",
        journald_limits("the broker and ledger", "1G", "3month").encode(),
    )
    return tree


def add_server(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "server",
        help="make a Debian host the community's broker and ledger",
        description="Write community DIR's broker, ledger validators, users and units "
        "into the root tree PATH (e.g. /); re-running changes nothing.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--root", type=Path, required=True, metavar="PATH")
    p.add_argument(
        "--broker-port",
        type=tcp_port,
        metavar="PORT",
        help="the TLS listener's port (default: DIR/broker/broker.toml's, 8883)",
    )
    p.add_argument("--wheel", type=Path, metavar="FILE", help="this project's wheel (default: build one)")
    p.set_defaults(run=_run_server, expected=(OSError, RootfsError))


def _run_server(args: argparse.Namespace) -> int:
    broker_settings(args.dir)  # refuse a community that cannot work before building a wheel
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or build_wheel(Path(tmp))
        print(setup_server(args.dir, args.root, wheel, args.broker_port).summary("root"))
    return 0
