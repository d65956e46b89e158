"""Who may use the bus, on disk: certificates for every identity and each broker's config dir.

`ensure_bus` runs at the end of every `spb-deploy provision` and after `revoke` and
`bridge`, and rewrites everything public from the keys and lists on disk, so the ACLs, CRL
and configs always describe the community as it is. Layout:

    DIR/ca/mqtt-ca.key                     the broker CA's key (secret)
    DIR/broker/                            the main broker: ca.crt, server.crt + .key, crl.pem,
                                           acl, acl-local, broker.toml, mosquitto.conf
    DIR/brokers/<name>/                    a bridged broker: the same plus bridge.crt + .key
    DIR/meters/<id>/, DIR/validators/vI/,  mqtt.crt + mqtt.key (CN = the identity) and ca.crt
    DIR/monitoring/<name>/, DIR/operator/,
    DIR/mirror/
    DIR/revoked.toml                       revoked meters: id, time, certificate serials

The mirror (`spb-monitor mirror`, CN `mirror`) is made on every run like the operator: it
reads spb/v1 and alone writes the JSON tree and Home Assistant's discovery configs
(broker.secure). Its dir is DIR/mirror/ (broker.secure.mirror_dir), not DIR/monitoring/mirror/,
since every dir under DIR/monitoring/ is taken for a read-only monitoring user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import tomli_w

from broker import secure
from broker.keys import secret_dir, write_public
from deploy.pki import Authority, cert_serial

CLIENT_CERT, CLIENT_KEY = "mqtt.crt", "mqtt.key"
REVOKED_NAME = "revoked.toml"
OPERATOR = "operator"
MIRROR = secure.MIRROR
DEFAULT_MONITOR = "monitor"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Revoked:
    id: str
    t: int  # ms
    serials: tuple[str, ...]  # hex serials of its certificates when it was revoked


def broker_dir(root: Path, name: str = "main") -> Path:
    return root / "broker" if name == "main" else root / "brokers" / name


def bridged_dirs(root: Path) -> list[Path]:
    """The dirs of every broker `spb-deploy bridge` added, by name."""
    return sorted(p.parent for p in (root / "brokers").glob(f"*/{secure.SETTINGS_NAME}"))


def meter_id_arg(text: str) -> str:
    """An argparse type: a meter id, shaped like the CNs the ACL knows as meters."""
    if not secure.METER_CN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a meter id like m0001")
    return text


def ensure_bus(
    root: Path,
    meters: list[str],
    validators: list[int],
    now_ms: int,
    valid_days: int,
    monitors: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
) -> secure.Identities:
    """Certificates for every identity and every broker dir's files; returns who may connect."""
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    ca = Authority.ensure(secret_dir(root / "ca") / "mqtt-ca.key", root / "broker" / secure.CA_CERT, now)
    revoked = read_revoked(root)
    monitor_names = sorted(
        set(monitors) | {p.name for p in (root / secure.MONITORING).glob("*") if p.is_dir()} or {DEFAULT_MONITOR}
    )
    for name in monitor_names:
        if (
            not secure.NAME_CN.fullmatch(name)
            or name in (OPERATOR, MIRROR)
            or name.startswith("bridge-")
            or secure.METER_CN.fullmatch(name)
            or secure.VALIDATOR_CN.fullmatch(name)
        ):
            raise ValueError(
                f"monitoring user {name!r}: use lower-case letters, digits and '-', "
                "and no name shaped like a meter (m0001), a validator (v0), 'operator', 'mirror' or 'bridge-...'"
            )
    clients = {mid: root / "meters" / mid for mid in meters if mid not in revoked}
    clients |= {f"v{i}": root / "validators" / f"v{i}" for i in validators}
    clients |= {name: secret_dir(secret_dir(root / secure.MONITORING) / name) for name in monitor_names}
    clients[OPERATOR] = secret_dir(root / OPERATOR)
    clients[MIRROR] = secret_dir(secure.mirror_dir(root))
    for cn, home in clients.items():
        _client(ca, home, cn, now, valid_days)
    brokers = _broker_settings(root, hosts)
    ids = secure.Identities(
        meters=tuple(meters),
        validators=tuple(f"v{i}" for i in validators),
        monitors=tuple(monitor_names),
        mirrors=(MIRROR,),
        operators=(OPERATOR,),
        bridges=tuple(f"bridge-{s.name}" for s in brokers if s.bridge_to),
        revoked=frozenset(revoked),
        accounts=_accounts(root, meters),
    )
    serials = {
        int(serial, 16): dt.datetime.fromtimestamp(r.t / 1000, dt.UTC) for r in revoked.values() for serial in r.serials
    }
    for settings in brokers:
        _broker(ca, broker_dir(root, settings.name), settings, ids, serials, now, valid_days)
    return ids


def refresh_bus(root: Path, now_ms: int, valid_days: int) -> secure.Identities:
    """ensure_bus for the members on disk, after a revocation or a new bridge."""
    meters = sorted(p.parent.name for p in root.glob("meters/m[0-9][0-9][0-9][0-9]/meter.toml"))
    validators = sorted(
        int(p.parent.name[1:]) for p in root.glob("validators/v*/validator.key") if p.parent.name[1:].isdecimal()
    )
    return ensure_bus(root, meters, validators, now_ms, valid_days)


def add_bridge(root: Path, name: str, to: str, tls_port: int, hosts: tuple[str, ...] = ()) -> secure.BrokerSettings:
    """Describe a second broker, bridged to `to` (HOST:PORT); ensure_bus then writes its dir."""
    if name == "main" or not secure.NAME_CN.fullmatch(name):
        raise ValueError(f"broker name {name!r}: use lower-case letters, digits and '-', not 'main'")
    settings = secure.BrokerSettings(tls_port=tls_port, name=name, bridge_to=to, hosts=hosts or DEFAULT_HOSTS)
    home = broker_dir(root, name)
    home.mkdir(parents=True, exist_ok=True)
    _write_settings(home, settings)
    return settings


def revoke(root: Path, meter_id: str, now_ms: int) -> Revoked:
    """Add a meter to DIR/revoked.toml with its certificate's serial; idempotent.

    Its client files stay on disk (evidence, and what the CRL names); ensure_bus then stops
    renewing them and denies the CN everything.
    """
    revoked = read_revoked(root)
    if meter_id in revoked:
        return revoked[meter_id]
    home = root / "meters" / meter_id
    if not (home / "meter.toml").exists():
        raise ValueError(f"{home}: no such meter")
    serial = cert_serial(home / CLIENT_CERT)
    entry = Revoked(meter_id, now_ms, (f"{serial:x}",) if serial is not None else ())
    revoked[meter_id] = entry
    rows = [asdict(r) for r in sorted(revoked.values(), key=lambda r: r.id)]
    write_public(
        root / REVOKED_NAME,
        "# Meters refused by the brokers and the ledger (spb-deploy revoke).\n" + tomli_w.dumps({"revoked": rows}),
    )
    return entry


def read_revoked(root: Path) -> dict[str, Revoked]:
    path = root / REVOKED_NAME
    rows = tomllib.loads(path.read_text()).get("revoked", []) if path.exists() else []
    return {row["id"]: Revoked(row["id"], row["t"], tuple(row["serials"])) for row in rows}


def _accounts(root: Path, meters: list[str]) -> tuple[tuple[str, str], ...]:
    """(meter, account key hex) of each meter whose household has an account, from the
    meter.toml provisioning wrote: the account status each meter may read."""
    found = []
    for mid in meters:
        path = root / "meters" / mid / "meter.toml"
        account = tomllib.loads(path.read_text()).get("account_pk") if path.exists() else None
        if account:
            found.append((mid, account))
    return tuple(found)


def _client(ca: Authority, home: Path, cn: str, now: dt.datetime, days: int) -> None:
    ca.ensure_leaf(home / CLIENT_CERT, home / CLIENT_KEY, cn, now, days)
    write_public(home / secure.CA_CERT, ca.cert_pem)


def _broker_settings(root: Path, hosts: tuple[str, ...]) -> list[secure.BrokerSettings]:
    """The main broker's settings (hosts given now replace the stored ones) and every bridged one's."""
    main = secure.BrokerSettings.load(broker_dir(root))
    if hosts or not main.hosts:
        main = replace(main, hosts=hosts or DEFAULT_HOSTS)
    _write_settings(broker_dir(root), main)
    return [main, *(secure.BrokerSettings.load(home) for home in bridged_dirs(root))]


def _broker(
    ca: Authority,
    home: Path,
    settings: secure.BrokerSettings,
    ids: secure.Identities,
    serials: dict[int, dt.datetime],
    now: dt.datetime,
    days: int,
) -> None:
    secret_dir(home)
    write_public(home / secure.CA_CERT, ca.cert_pem)
    ca.ensure_leaf(home / secure.SERVER_CERT, home / secure.SERVER_KEY, settings.hosts[0], now, days, settings.hosts)
    if settings.bridge_to:
        ca.ensure_leaf(home / secure.BRIDGE_CERT, home / secure.BRIDGE_KEY, f"bridge-{settings.name}", now, days)
    ca.write_crl(home / secure.CRL, serials, now)
    for name, text in (
        (secure.ACL_NAME, secure.acl(ids)),
        (secure.LOCAL_ACL_NAME, secure.local_acl()),
        (secure.CONF_NAME, secure.mosquitto_conf(settings, home, home / "data")),
    ):
        write_public(home / name, text)


def _write_settings(home: Path, settings: secure.BrokerSettings) -> None:
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items() if v is not None}
    write_public(
        home / secure.SETTINGS_NAME,
        "# This broker's settings; spb-deploy provision keeps them.\n" + tomli_w.dumps(values),
    )
