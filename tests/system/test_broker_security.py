"""Zero trust on the bus, against a real Mosquitto with the provisioned TLS config and ACL.

Mosquitto acknowledges a publish it denies like any other, so a test never trusts the
PUBACK: it publishes what must be refused, waits for those PUBACKs (Mosquitto routes a
message before acknowledging it), then publishes an allowed sentinel on the same
connection or later, and proves that the watcher got the sentinel and nothing forbidden.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker import secure
from broker.client import TlsFiles
from broker.clock import wall_ms
from broker.runtime import free_port
from deploy import access
from deploy.access import REVOCATIONS
from deploy.cli import main as deploy_main
from deploy.pki import Authority
from deploy.provision import community_genesis, provision
from ledger.genesis import write_genesis
from tests.support.acl_bus import broker, bus, publish_all, sentinel
from tests.support.bus import REPO, Inbox, child_env, connected, read_line, wait_for
from tests.support.ledger import RunningLedger, wait_online
from wire import topics
from wire.messages import open_message

CONNACK_OK = b"\x20\x02\x00\x00"


@pytest.fixture
def community(tmp_path) -> Path:
    """A provisioned community that is also a ledger dir (genesis, validator v0)."""
    root = tmp_path / "community"
    write_genesis(
        root,
        community_genesis(provision(root, meters=3, accounts=None, validators=1, now_ms=wall_ms()), 1_000, block_ms=50),
    )
    return root


def handshake(port: int, ca: Path, cert: Path | None = None, key: Path | None = None, tls: bool = True) -> bytes | str:
    """An MQTT CONNECT over a fresh connection: the CONNACK bytes, or why there was none."""
    connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05probe"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            if not tls:
                raw.sendall(connect)
                return raw.recv(4) or "closed"
            context = ssl.create_default_context(cafile=ca)
            if cert is not None:
                context.load_cert_chain(cert, key)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as stream:
                stream.sendall(connect)
                return stream.recv(4) or "closed"
        except (ssl.SSLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


def _handshake_as(broker, community: Path, who: str) -> bytes | str:
    files = TlsFiles.in_dir(community / who)
    return handshake(broker.port, files.ca, files.cert, files.key)


def test_a_meter_speaks_only_for_itself(bus):
    watcher = bus("validators/v0", ("spb/v1/#",))
    a = bus("meters/m0001")
    forged = [f"spb/v1/meters/m0002/{leaf}" for leaf in ("state", "birth", "reading")]
    forged += [
        f"spb/v1/status/{'ab' * 16}",
        "spb/v1/rejects",
        "spb/v1/ledger/state",
        "spb/v1/ledger/blocks",
        "spb/v1/consensus/prepare",
        "spb/v1/meters/m0001/coe/other",
        "spb/v1/other",
        "spb/v1/tx/other",
        "spb/v1/market/7/result",
        f"spb/v1/market/7/order/{'ab' * 16}",
        f"spb/v1/account/{'ab' * 32}",
        *(t for t in topics.OPERATOR_TXS if t != topics.TX_ROTATE),  # the operator's (decision 0016)
    ]
    publish_all(a, forged)
    allowed = [
        "spb/v1/meters/m0001/reading",
        # ctp, erc, cancel, revoke, the market's ask ... export, and its key's rotate
        *(t for t in topics.TX_TYPES if t not in forged),
        "spb/v1/meters/m0002/coe/req",
        "spb/v1/meters/m0002/coe/resp",
    ]
    publish_all(a, allowed, b"fine")
    assert sentinel(watcher, a, "spb/v1/meters/m0001/state") == [
        *((topic, b"fine") for topic in allowed),
        ("spb/v1/meters/m0001/state", b"sentinel"),
    ]


def test_a_meter_reads_its_own_coe_answers_and_not_anothers(bus):
    a = bus("meters/m0001", ("spb/v1/#",))
    b = bus("meters/m0002", ("spb/v1/meters/m0002/coe/resp",))
    witness = bus("meters/m0003")
    publish_all(witness, ["spb/v1/meters/m0002/coe/resp", "spb/v1/meters/m0002/coe/req"], b"for m0002")
    assert sentinel(a, witness, "spb/v1/meters/m0003/state") == [("spb/v1/meters/m0003/state", b"sentinel")]
    assert wait_for(lambda: b.inbox.payloads()) == [b"for m0002"]  # the requester does get it


def test_a_meter_reads_the_market_but_not_the_transactions_of_others(bus):
    """The book and results are public (§9.5); orders and export records reach only the ledger."""
    reader = bus("meters/m0001", ("spb/v1/#",))
    seller, v0 = bus("meters/m0002"), bus("validators/v0")
    publish_all(seller, list(topics.TX_TYPES), b"not for m0001")
    publish_all(v0, [f"spb/v1/market/7/order/{'ab' * 16}", "spb/v1/market/7/result"], b"market")
    assert sentinel(reader, seller, "spb/v1/meters/m0002/state") == [
        (f"spb/v1/market/7/order/{'ab' * 16}", b"market"),
        ("spb/v1/market/7/result", b"market"),
        ("spb/v1/meters/m0002/state", b"sentinel"),
    ]


def test_a_meter_reads_its_own_account_status_and_no_neighbours(bus, broker, community, make_client):
    """§9.6: balances are private; validators write them; monitors and the loopback listener read them."""
    own, neighbour = (topics.account(bytes.fromhex(account_pk(community, mid))) for mid in ("m0001", "m0002"))
    reader = bus("meters/m0001", ("spb/v1/#",))
    monitor = bus("monitoring/monitor", (topics.ACCOUNT_ALL,))
    anonymous = make_client(broker.local_port, "anonymous")
    anonymous.inbox = Inbox()
    anonymous.subscribe(topics.ACCOUNT_ALL, anonymous.inbox)
    connected(anonymous)
    v0, neighbours_meter = bus("validators/v0"), bus("meters/m0002")
    publish_all(neighbours_meter, [neighbour, own])  # a meter writes no account status, not even its own
    publish_all(v0, [neighbour, own], b"money")
    assert sentinel(reader, v0, own) == [(own, b"money"), (own, b"sentinel")]
    for watcher in (monitor, anonymous):
        wait_for(lambda w=watcher: (own, b"sentinel") in [m[:2] for m in w.inbox.messages])
        assert [m[:2] for m in watcher.inbox.messages] == [(neighbour, b"money"), (own, b"money"), (own, b"sentinel")]


def account_pk(community: Path, meter: str) -> str:
    """The household account key provisioning wrote for a meter."""
    return tomllib.loads((community / "meters" / meter / "meter.toml").read_text())["account_pk"]


def test_only_validators_write_ledger_topics(bus):
    watcher = bus("monitoring/monitor", ("spb/v1/#",))
    v0 = bus("validators/v0")
    ledger_topics = [
        f"spb/v1/status/{'cd' * 16}",
        "spb/v1/rejects",
        "spb/v1/ledger/blocks",
        "spb/v1/consensus/commit",
        f"spb/v1/market/7/order/{'cd' * 16}",
        "spb/v1/market/7/result",
        f"spb/v1/account/{'cd' * 32}",
    ]
    publish_all(v0, ["spb/v1/meters/v0/state", "spb/v1/meters/m0001/state", "spb/v1/tx/ctp"])
    publish_all(v0, ledger_topics, b"fine")
    assert sentinel(watcher, v0, "spb/v1/ledger/state") == [
        *((topic, b"fine") for topic in ledger_topics),
        ("spb/v1/ledger/state", b"sentinel"),
    ]


def test_monitoring_reads_everything_and_writes_nothing(bus):
    watcher = bus("validators/v0", ("spb/v1/#",))
    monitor = bus("monitoring/monitor", ("spb/v1/#",))
    everywhere = [
        "spb/v1/tx/ctp",
        "spb/v1/tx/revoke",
        "spb/v1/tx/bid",
        "spb/v1/tx/export",
        f"spb/v1/status/{'ef' * 16}",
        "spb/v1/market/7/result",
        "spb/v1/rejects",
        "spb/v1/ledger/state",
        "spb/v1/consensus/x",
        "spb/v1/meters/m0001/state",
        "spb/v1/meters/monitor/state",
        "spb/v1/meters/m0001/coe/req",
        "spb/v1/anything",
    ]
    publish_all(monitor, everywhere)
    meter = bus("meters/m0001")
    assert sentinel(watcher, meter, "spb/v1/meters/m0001/state") == [("spb/v1/meters/m0001/state", b"sentinel")]
    assert wait_for(lambda: monitor.inbox.payloads()) == [b"sentinel"]  # ...and the monitor read it


def test_no_certificate_or_a_foreign_one_is_refused(broker, community, tmp_path):
    ca = community / "broker" / "ca.crt"
    assert _handshake_as(broker, community, "meters/m0001") == CONNACK_OK  # the control
    assert handshake(broker.port, ca) != CONNACK_OK  # TLS without a client certificate
    assert handshake(broker.port, ca, tls=False) != CONNACK_OK  # plain MQTT on the TLS port
    now = dt.datetime.now(dt.UTC)
    stranger = Authority.ensure(tmp_path / "other-ca.key", tmp_path / "other-ca.crt", now)
    stranger.ensure_leaf(tmp_path / "m0001.crt", tmp_path / "m0001.key", "m0001", now, 30)
    refused = handshake(broker.port, ca, tmp_path / "m0001.crt", tmp_path / "m0001.key")
    assert refused != CONNACK_OK and "SSL" in refused, refused


def test_local_listener_is_read_only_for_anonymous_clients(broker, bus, make_client):
    watcher = bus("validators/v0", ("spb/v1/#",))
    anonymous = make_client(broker.local_port, "anonymous")
    anonymous.inbox = Inbox()
    anonymous.subscribe("spb/v1/#", anonymous.inbox)
    connected(anonymous)
    publish_all(anonymous, ["spb/v1/tx/ctp", "spb/v1/meters/m0001/state"])
    meter = bus("meters/m0001")
    assert sentinel(watcher, meter, "spb/v1/meters/m0001/state") == [("spb/v1/meters/m0001/state", b"sentinel")]
    assert wait_for(lambda: anonymous.inbox.payloads()) == [b"sentinel"]


def test_revoked_meter_is_refused_and_its_revocation_reaches_the_ledger(broker, community, bus, capsys, monkeypatch):
    """The ledger (validator v0's certificate) takes the revocation into a block; a monitor
    watches, since a second connection with v0's CN would take over the ledger's session."""
    ledger = RunningLedger(community, broker.port, tls=TlsFiles.in_dir(community / "validators/v0"))
    watcher = bus("monitoring/monitor", ("spb/v1/#",))
    wait_online(watcher.inbox)  # the ledger is subscribed: the revocation below reaches it
    # The control first: a second connection with m0003's CN would take over the session below.
    assert _handshake_as(broker, community, "meters/m0003") == CONNACK_OK
    revoked = bus("meters/m0003")
    publish_all(revoked, ["spb/v1/meters/m0003/state"], b"before")
    wait_for(lambda: b"before" in watcher.inbox.payloads())

    assert deploy_main(["revoke", str(community), "m0003", "--broker", f"mqtts://127.0.0.1:{broker.port}"]) == 0
    assert "re-read the CRL and ACL" in capsys.readouterr().out
    message = (community / REVOCATIONS / "m0003.cbor").read_bytes()
    wait_for(lambda: ("spb/v1/tx/revoke", message) in [(t, p) for t, p, _ in watcher.inbox.messages])
    revoked_pk = open_message(message, "revoke").body.pk
    wait_for(lambda: revoked_pk in ledger.service.node.state.revoked, message="the revocation in a ledger block")
    ledger.stop()

    # Sent to the read-only listener, the revocation is acknowledged but never passed on: an error.
    monkeypatch.setattr(access, "TIMEOUT_S", 2)
    assert deploy_main(["revoke", str(community), "m0003", "--broker", f"127.0.0.1:{broker.local_port}"]) == 1
    assert "did not pass the revocation on" in capsys.readouterr().err
    # New connections with its certificate fail the handshake once Mosquitto has re-read the CRL
    # (the client sees an alert or just EOF, depending on timing)...
    refusal = wait_for(lambda: (r := _handshake_as(broker, community, "meters/m0003")) != CONNACK_OK and r)
    assert refusal.startswith("SSL"), refusal
    assert _handshake_as(broker, community, "meters/m0001") == CONNACK_OK
    # ...and the connection it still has can say nothing: the ACL now denies its CN everything.
    publish_all(revoked, ["spb/v1/meters/m0003/state", "spb/v1/tx/erc"], b"after")
    meter = bus("meters/m0001")
    tail = sentinel(watcher, meter, "spb/v1/meters/m0001/state")
    assert b"after" not in [payload for _, payload in tail]

    # Running it again changes nothing and sends the very same revocation.
    before = {p: p.read_bytes() for p in community.rglob("*") if p.is_file() and "data" not in p.parts}
    assert deploy_main(["revoke", str(community), "m0003"]) == 0
    assert {p: p.read_bytes() for p in community.rglob("*") if p.is_file() and "data" not in p.parts} == before


def test_spb_broker_runs_a_provisioned_broker_dir_until_signalled(community, make_client):
    port, local_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "broker.cli",
        "run",
        "--config-dir",
        str(community / "broker"),
        "--port",
        str(port),
        "--local-port",
        str(local_port),
    ]
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        try:
            assert read_line(cli.stdout) == f"spb-broker: mosquitto listening on mqtts://127.0.0.1:{port}\n"
            files = TlsFiles.in_dir(community / "meters/m0001")
            assert handshake(port, files.ca, files.cert, files.key) == CONNACK_OK
            connected(make_client(local_port, "anonymous"))  # the read-only loopback listener is there too
            assert (community / "broker/data" / secure.PID_NAME).exists()  # where spb-deploy revoke looks
            cli.send_signal(signal.SIGTERM)
            assert cli.wait(15) == 0, cli.stderr.read()
        finally:
            cli.kill()
    refused = subprocess.run(
        [*command, "--embedded"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2 and "--embedded cannot do TLS" in refused.stderr


def test_revoking_an_unknown_meter_changes_nothing(community, capsys):
    before = {p: p.read_bytes() for p in community.rglob("*") if p.is_file()}
    assert deploy_main(["revoke", str(community), "m0042"]) == 1
    assert "m0042: no such meter" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in community.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name", ["v0", "m0005", "operator", "bridge-x", "Monitor"])
def test_a_monitoring_user_cannot_be_named_like_another_kind(tmp_path, name):
    with pytest.raises(ValueError, match="monitoring user"):
        provision(tmp_path, meters=1, accounts=None, validators=1, now_ms=wall_ms(), monitors=(name,))


__all__ = ["broker", "bus"]  # fixtures used by name
