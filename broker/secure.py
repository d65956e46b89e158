"""The production broker's configuration: Mosquitto with mutual TLS and per-identity ACLs.

Zero trust on the bus: every client shows a certificate from the community's broker CA, its
CN becomes its username and client id, and the ACL (docs/PROTOCOL.md §7, with the amendments in
docs/decisions/0005-broker-security.md) lets a meter speak only for itself and read only what it
uses (no neighbour's readings: docs/decisions/0012-neighbour-privacy.md), validators alone
write what the ledger says, monitoring users read without writing, and the monitoring mirror
(`spb-monitor mirror`) alone writes the JSON tree beside the protocol's. Pure text rendering;
provisioning (deploy/) makes the certificates and writes these files.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from broker.runtime import Mosquitto, common_settings
from wire import topics

TLS_PORT = 8883
SETTINGS_NAME = "broker.toml"
CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"
LOCAL_ACL_NAME = "acl-local"
CA_CERT, SERVER_CERT, SERVER_KEY, CRL = "ca.crt", "server.crt", "server.key", "crl.pem"
BRIDGE_CERT, BRIDGE_KEY = "bridge.crt", "bridge.key"
PID_NAME = "mosquitto.pid"

# Usernames are certificate CNs that the ACL spells by kind (deploy.bus refuses a name of
# one kind that has the shape of another's).
METER_CN = re.compile(r"m\d{4}")
VALIDATOR_CN = re.compile(r"v\d{1,4}")
NAME_CN = re.compile(r"[a-z][a-z0-9-]{0,31}")
# The monitoring mirror's CN. Its certificate lives in DIR/mirror/, not DIR/monitoring/mirror/:
# every dir under DIR/monitoring/ is a read-only monitoring user, and the mirror is not one.
MIRROR = "mirror"
MONITORING = "monitoring"

# Beside the signed protocol: the mirror republishes each verified spb/v1/<path> message as
# JSON on spb-json/v1/<path> and announces it to Home Assistant (MQTT discovery) under
# homeassistant/. Informative only (docs/PROTOCOL.md §7), so nothing in spb/v1 reads it.
JSON_TREE = "spb-json"
DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's default MQTT discovery prefix
JSON_ALL = f"{JSON_TREE}/#"
DISCOVERY_ALL = f"{DISCOVERY_PREFIX}/#"

# Transactions only an operator key signs (docs/PROTOCOL.md §10): no meter sends them.
# `rotate` is not among them: the household's old key signs it too.
_OPERATOR_ONLY = frozenset(topics.OPERATOR_TXS) - {topics.TX_ROTATE}
# A meter's own subtree, by %u: it writes its state, birth and readings, and reads the CoE
# requests it is asked to witness and the answers to its own. Not its own readings: it made them.
_METER_PATTERNS = """\
pattern write spb/v1/meters/%u/state
pattern write spb/v1/meters/%u/birth
pattern write spb/v1/meters/%u/reading
pattern read spb/v1/meters/%u/coe/req
pattern read spb/v1/meters/%u/coe/resp
"""
# What every meter shares with the others: only what a running meter subscribes to (edge/),
# each read for the reason beside it; the table of docs/PROTOCOL.md §7 is the contract
# (tests/broker/test_acl.py checks one against the other), docs/decisions/0012 the why.
# Every transaction topic (wire.topics.TX_TYPES, so a new message type cannot be forgotten
# here) but the operator's (decision 0016): a household's meter sends its CTPs, ERCs, orders,
# export records and its account key's rotation, each signed by the key the ledger checks, so
# a meter gains nothing by sending another's. coe/resp of other
# meters is writable because the witness answers on the requester's topic (§7); the CoE inside
# is signed, so a forged one is only refused by the requester, and a meter still reads only
# its own answers. No neighbour's readings (decision 0012: they tell when a household is home),
# no transaction, no block (it carries every export record), no other household's account.
_METER_SHARED = (
    "".join(f"topic write {topic}\n" for topic in topics.TX_TYPES if topic not in _OPERATOR_ONLY)
    + f"""\
topic write spb/v1/meters/+/coe/req
topic write spb/v1/meters/+/coe/resp
# peers' births (devcerts, device keys): the meters that may witness its CoEs
topic read spb/v1/meters/+/birth
# peers' online states: which of them to ask now
topic read spb/v1/meters/+/state
# its trades and sales: the market's fills get ids it cannot know in advance (decision 0009)
topic read spb/v1/status/#
# the refusals of its own messages, matched by message hash
topic read spb/v1/rejects
# whether the ledger is up: no household's data (no meter code reads it yet; a display may)
topic read {topics.LEDGER_STATE_ALL}
# its orders' statuses and the results: the book is public (docs/PROTOCOL.md 9.5)
topic read {topics.MARKET_ALL}
"""
)
_VALIDATOR = f"""\
topic read spb/v1/#
topic write spb/v1/status/#
topic write spb/v1/rejects
topic write spb/v1/ledger/#
topic write spb/v1/consensus/#
topic write {topics.MARKET_ALL}
topic write {topics.ACCOUNT_ALL}
topic write {topics.STATEMENT}/+
"""
# Monitoring users (Grafana, Telegraf, Home Assistant elsewhere) read the JSON tree too.
_MONITOR = f"topic read spb/v1/#\ntopic read {JSON_ALL}\ntopic read {DISCOVERY_ALL}\n"
# The mirror reads what it verifies and writes only its own trees: nothing of spb/v1, so a
# mirror's key, kept on a monitoring host, can forge no protocol message.
_MIRROR = f"topic read spb/v1/#\ntopic write {JSON_ALL}\ntopic write {DISCOVERY_ALL}\n"
# The operator publishes CA-signed revocations (docs/decisions/0004-revocation.md) and its
# own transactions (register, fund, payout, retire, rotate: decision 0016), and reads.
_OPERATOR = "topic read spb/v1/#\n" + "".join(
    f"topic write {topic}\n" for topic in (topics.TX_REVOKE, *topics.OPERATOR_TXS)
)
# A bridged broker relays the whole spb/v1 tree both ways; what its own clients may say its own
# ACL decides, so this broker trusts the peer broker as much as its own ACL file. The JSON
# tree is not bridged: a mirror runs beside each broker whose clients want it (bridging it
# too would deliver each message twice where both brokers have one, and let a peer broker
# write a tree that only the local mirror identity may).
_BRIDGE = "topic readwrite spb/v1/#\n"


@dataclass(frozen=True)
class Identities:
    """Who may connect, by certificate CN, and who no longer may."""

    meters: tuple[str, ...] = ()
    validators: tuple[str, ...] = ()
    monitors: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    bridges: tuple[str, ...] = ()
    revoked: frozenset[str] = frozenset()
    # Meter CN -> its household's account key (hex): the one account status it may read
    # (docs/PROTOCOL.md §9.6; a household's balance is no neighbour's business).
    accounts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BrokerSettings:
    """DIR/broker/broker.toml: what an operator may tune; everything else follows from it."""

    tls_port: int = TLS_PORT
    bind: str = ""  # TLS listener address; empty: every interface
    hosts: tuple[str, ...] = ()  # names and addresses clients reach it by (its certificate's SANs)
    local_port: int | None = None  # read-only anonymous listener on 127.0.0.1 (development)
    name: str = "main"  # this broker among the community's; a bridge's certificate is bridge-<name>
    bridge_to: str | None = None  # HOST:PORT of the broker this one bridges to, over TLS

    @classmethod
    def load(cls, config_dir: Path) -> BrokerSettings:
        path = config_dir / SETTINGS_NAME
        values = tomllib.loads(path.read_text()) if path.exists() else {}
        return cls(**values | {"hosts": tuple(values.get("hosts", ()))})


def acl(ids: Identities) -> str:
    """The TLS listener's ACL file. Mosquitto applies `deny` before any grant, pattern or not."""
    lines = [
        "# Generated by spb-energy (broker.secure.acl) from the community; edits are overwritten.\n",
        "# No anonymous clients on this listener: every section below is a certificate CN.\n\n",
        _METER_PATTERNS,
    ]
    for cn in sorted(ids.revoked):
        lines.append(f"\n# revoked: nothing at all, even what the patterns grant\nuser {cn}\ntopic deny #\n")
    sections = (
        (ids.meters, _METER_SHARED),
        (ids.validators, _VALIDATOR),
        (ids.monitors, _MONITOR),
        (ids.mirrors, _MIRROR),
        (ids.operators, _OPERATOR),
        (ids.bridges, _BRIDGE),
    )
    accounts = dict(ids.accounts)
    for names, grants in sections:
        for cn in sorted(set(names) - ids.revoked):
            # Only meters own a subtree: cancel the %u patterns for everyone else.
            own = "" if grants is _METER_SHARED else f"topic deny spb/v1/meters/{cn}/#\n"
            if grants is _METER_SHARED and cn in accounts:
                account = topics.account(bytes.fromhex(accounts[cn]))
                own = f"# its household's money, to plan its bids (docs/PROTOCOL.md 9.6)\ntopic read {account}\n"
                own += _statement_grants(bytes.fromhex(accounts[cn]))
            lines.append(f"\nuser {cn}\n{grants}{own}")
    return "".join(lines)


def _statement_grants(account: bytes) -> str:
    """A meter asks for its own household's statement and reads the answers (decision 0017):
    no other household's, whose money is none of its business."""
    return (
        "# its household's statements: it asks, every validator answers (docs/PROTOCOL.md 10.4)\n"
        f"topic write {topics.statement_request(account)}\ntopic read {topics.statement(account)}\n"
    )


def local_acl() -> str:
    """The loopback development listener: anonymous clients read the tree and write nothing.

    They read the mirror's JSON tree and discovery configs too: that is how Home Assistant,
    Grafana or Telegraf on the broker's own host consume the community. Every household's
    readings with them, to any process on that host: development only (decision 0012).
    """
    return (
        "# Generated by spb-energy (broker.secure.local_acl); edits are overwritten.\n"
        "# Anonymous clients only (a client naming a user gets no grants here).\n"
        f"topic read spb/v1/#\ntopic read {JSON_ALL}\ntopic read {DISCOVERY_ALL}\n"
    )


def mirror_dir(root: Path) -> Path:
    """DIR/mirror: the mirror identity's mqtt.crt, mqtt.key and ca.crt (broker.client.TlsFiles.in_dir).

    Here rather than in deploy.bus, which writes it, so `spb-monitor mirror` (below deploy)
    finds it in a provisioned community.
    """
    return root / MIRROR


def monitor_dir(root: Path, name: str) -> Path:
    """DIR/monitoring/NAME: a monitoring user's TLS files, laid out like the mirror's."""
    return root / MONITORING / name


def mosquitto_conf(
    settings: BrokerSettings, config_dir: Path, data_dir: Path, tls_port: int | None = None, run_as: str | None = None
) -> str:
    """mosquitto.conf for certificates and ACLs in `config_dir`, state and log in `data_dir`.

    Paths are written as given (resolved), so a server setup can render the paths of the
    host it installs to; run_as as in broker.runtime.common_settings.
    """
    config_dir, data_dir = config_dir.resolve(), data_dir.resolve()
    port = settings.tls_port if tls_port is None else tls_port
    parts = [
        f"""\
# Generated by spb-energy (broker.secure.mosquitto_conf); edits are overwritten.
# Each listener has its own authentication and ACL.
per_listener_settings true
pid_file {data_dir / PID_NAME}
{common_settings(data_dir, run_as)}
# Mutual TLS: no certificate from the community's CA (or a revoked one), no connection.
listener {port} {settings.bind}
cafile {config_dir / CA_CERT}
certfile {config_dir / SERVER_CERT}
keyfile {config_dir / SERVER_KEY}
crlfile {config_dir / CRL}
tls_version tlsv1.2
require_certificate true
# The certificate's CN is the username the ACL checks, and the client id, so no client can
# take over another's session by reusing its client id.
use_identity_as_username true
use_username_as_clientid true
allow_anonymous false
acl_file {config_dir / ACL_NAME}
""".rstrip()
        + "\n"
    ]
    if settings.local_port is not None:
        parts.append(f"""
# Development and local monitoring: plain MQTT on loopback, read-only for anonymous clients.
# Client ids are global across listeners, so a local process could take over a certificate
# holder's session from here: a development convenience, not for a production broker.
listener {settings.local_port} 127.0.0.1
allow_anonymous true
acl_file {config_dir / LOCAL_ACL_NAME}
""")
    if settings.bridge_to is not None:
        parts.append(f"""
# Bridge to the broker at {settings.bridge_to}: the whole spb/v1 tree both ways, over TLS, as bridge-{settings.name}.
# Not spb-json/# nor homeassistant/#: a mirror runs beside each broker that needs them.
connection bridge-{settings.name}
address {settings.bridge_to}
topic spb/v1/# both 1
cleansession false
bridge_protocol_version mqttv311
try_private true
bridge_cafile {config_dir / CA_CERT}
bridge_certfile {config_dir / BRIDGE_CERT}
bridge_keyfile {config_dir / BRIDGE_KEY}
""")
    return "".join(parts)


def start_secure(
    config_dir: Path, port: int | None = None, local_port: int | None = None, data_dir: Path | None = None
) -> Mosquitto:
    """Mosquitto on a provisioned broker dir; port and local_port override broker.toml's.

    Only Mosquitto: the embedded broker has no TLS client authentication or ACL files.
    """
    settings = BrokerSettings.load(config_dir)
    if local_port is not None:
        settings = replace(settings, local_port=local_port)
    missing = [name for name in (CA_CERT, SERVER_CERT, SERVER_KEY, CRL, ACL_NAME) if not (config_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{config_dir} lacks {', '.join(missing)}: run `spb-deploy provision` on the community")
    broker = Mosquitto(render=lambda tls_port, data: mosquitto_conf(settings, config_dir, data, tls_port))
    broker.scheme = "mqtts"
    broker.local_port = settings.local_port
    broker.start(settings.tls_port if port is None else port, data_dir or config_dir / "data")
    return broker
