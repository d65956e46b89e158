"""`spb-monitor mirror` over TLS as the community's `mirror` identity, while the street trades.

A reader on the broker's read-only loopback listener gets both trees on one connection, so
it holds each signed source before the JSON made from it (the broker queues the source to
both at once, and the mirror publishes only after it got it). Every JSON value is checked
against its source opened here with wire.verify and monitor.records.record, independently of
the mirror's view; a second reader that connects later sees what is retained.

The forged message is a revocation signed by a key that is not the CA's, sent by the
community's operator (the one identity besides meters and validators that may write a
protocol topic, and one no process of the street uses). Its marker is the validators' reject
of it: the broker delivers the forgery to the mirror before that reject exists, so once the
reject's JSON is in, the forgery's JSON would be in too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from broker.runtime import find_mosquitto, free_port
from broker.secure import start_secure
from deploy.provision import community_genesis, provision
from ledger.block import Block
from ledger.genesis import write_genesis
from monitor.mirror import MIRROR_STATE, SENSORS, discovery
from monitor.records import record
from monitor.view import retained_topic
from tests.support.bus import Inbox, connected, wait_for
from tests.support.procs import Procs
from tests.support.street import STREET, Street
from wire import topics
from wire.cose import message_hash
from wire.messages import Birth, CtpState, DevCert, Reading, Revoke, Status, open_message
from wire.reasons import Reject
from wire.verify import Verifier

JSON = "spb-json/v1/"
METERS = tuple(h.meter for h in STREET)
Message = tuple[str, bytes, bool]
Expected = tuple[dict[str, Any], bool]  # a record, or the part of it checked here; whether it is all of it


def reader(street: Street, name: str, filters: tuple[str, ...]) -> tuple[BusClient, Inbox]:
    """An anonymous client of the read-only loopback listener, its subscriptions feeding one inbox."""
    assert street.broker.local_port is not None
    client = BusClient("127.0.0.1", street.broker.local_port, f"{name}-{wall_ms() % 10**6}", clean_session=True)
    inbox = Inbox()
    for topic_filter in filters:
        client.subscribe(topic_filter, inbox)
    return connected(client), inbox


class Opener:
    """What the mirror should make of a source message, worked out without monitor.view."""

    def __init__(self, verifier: Verifier):
        self.verifier = verifier
        self.devices: dict[str, bytes] = {}  # meter -> device key, from its births

    def expected(self, topic: str, raw: bytes) -> Expected | None:
        """None for a message that does not verify, or that the mirror does not mirror."""
        now = wall_ms()
        try:
            parsed = topics.parse_meter_topic(topic)
            if parsed is not None:
                meter, leaf = parsed
                if leaf == "state":
                    return {"meter": meter, "state": raw.decode()}, True
                if leaf == "birth":
                    birth = self.verifier.verify(raw, now, expect=Birth).body
                    self.devices[meter] = open_message(birth.cert, DevCert).body.pk
                    return record(birth), True
                if leaf == "reading" and meter in self.devices:
                    reading = self.verifier.verify(raw, now, expect=Reading, device_key=self.devices[meter]).body
                    return record(reading), True
                return None
            if topic == topics.LEDGER_BLOCKS:
                block = Block.from_chain_bytes(raw)
                return {"height": block.header.height, "hash": block.header.hash.hex(), "bytes": len(raw)}, False
            if topic.startswith(topics.LEDGER_STATE_ALL[:-1]):
                return {"validator": topic.rsplit("/", 1)[1], "online": raw.startswith(b"online")}, False
            typ = topics.expected_type(topic)
            return None if typ is None else (record(self.verifier.verify(raw, now, expect=typ).body), True)
        except Reject:
            return None


def check_values(messages: list[Message], opener: Opener) -> dict[str, int]:
    """Each live JSON value is what a verified message before it on its source topic says, and
    each summary carries the meter's last mirrored reading; the count checked, by first level."""
    sources: dict[str, list[Expected]] = {}
    last_reading: dict[str, dict[str, Any]] = {}
    checked: dict[str, int] = {}
    for topic, payload, retained in messages:
        if topic.startswith(f"{topics.ROOT}/"):
            expected = opener.expected(topic, payload)
            if expected is not None:
                sources.setdefault(topic, []).append(expected)
            continue
        if not topic.startswith(JSON) or retained or topic == MIRROR_STATE:  # that one is plain text
            continue
        path, value = topic.removeprefix(JSON), json.loads(payload)
        kind = path.split("/")[0]
        if path.startswith("meters/") and path.endswith("/summary"):
            reading = last_reading.get(path.split("/")[1])
            if reading is not None:
                assert [value[k] for k in ("w", "wh_in", "wh_out")] == [reading[k] for k in ("w", "wh_in", "wh_out")]
            kind = "summary"
        else:
            candidates = sources.get(f"{topics.ROOT}/{path}", [])
            assert any(_matches(value, c) for c in candidates), f"{topic}: {value} is none of {candidates[-3:]}"
            if path.endswith("/reading"):
                last_reading[path.split("/")[1]] = value
        checked[kind] = checked.get(kind, 0) + 1
    return checked


def _matches(value: dict[str, Any], expected: Expected) -> bool:
    want, whole = expected
    return value == want if whole else all(value.get(k) == v for k, v in want.items())


def forged_revoke(street: Street) -> bytes:
    """A revocation that names the community's CA as its issuer but is signed by another key."""
    ca = bytes.fromhex(street.community.ca_pk)
    body = Revoke(meter="m0001", pk=bytes(range(32)), iss=ca, t=wall_ms())
    return body.sign(SigningKey.generate())


def test_the_mirror_republishes_only_what_verifies(street, monitor_process):
    live_reader, live = reader(street, "mirror-live", ("spb/v1/#", "spb-json/#"))
    try:
        proc, _ = monitor_process("mirror", "--broker", street.broker.url, ready="mirroring to spb-json/v1 as mirror")
        operator = BusClient(
            "127.0.0.1",
            street.broker.port,
            "operator",
            clean_session=True,
            tls=TlsFiles.in_dir(street.root / "operator"),
        )
        connected(operator)
        forged = forged_revoke(street)
        try:
            assert operator.wait_acked(operator.publish(topics.TX_REVOKE, forged), 10)
        finally:
            operator.close()
        marker = message_hash(forged).hex()

        def json_of(path: str) -> list[dict[str, Any]]:
            return [json.loads(p) for t, p, _ in list(live.messages) if t == JSON + path]

        def seen() -> set[str]:
            """What the test waits for: the forgery's reject, a settled trade, an account, readings."""
            have = set()
            got = list(live.messages)
            if any(json.loads(p).get("msg") == marker for t, p, _ in got if t == JSON + "rejects"):
                have.add("reject")
            statuses = [json.loads(p) for t, p, _ in got if t.startswith(JSON + "status/")]
            if any(s["state"] == CtpState.SETTLED for s in statuses):
                have.add("settled")
            if any(t.startswith(JSON + "account/") for t, _, _ in got):
                have.add("account")
            have |= {t.split("/")[3] for t, _, _ in got if t.startswith(JSON + "meters/") and t.endswith("/reading")}
            return have

        want = {"reject", "settled", "account", *METERS}
        wait_for(lambda: seen() >= want, 120, lambda: f"{want - seen()}{street.procs.logs()}", interval=0.2)
        logs = [path.read_text() for path in street.procs.log_dir.glob("monitor-mirror-*.log")]
        assert any(f"not mirrored: signature on {topics.TX_REVOKE}" in log for log in logs), street.procs.logs()
        messages = list(live.messages)
        assert not [t for t, _, _ in messages if t == JSON + "tx/revoke"], "the forgery was mirrored"

        checked = check_values(messages, Opener(street.verifier))
        assert {"meters", "status", "account", "rejects", "summary"} <= set(checked), checked

        # By hand, a few fields against the signed bodies.
        reading_raw = next(p for t, p, _ in reversed(messages) if t == topics.meter("m0004", "reading"))
        body = open_message(reading_raw, Reading).body
        mirrored = [r for r in json_of("meters/m0004/reading") if r["seq"] == body.seq]
        assert mirrored and (mirrored[0]["wh_in"], mirrored[0]["w"]) == (body.wh_in, body.w)
        status_topic, status_raw = next((t, p) for t, p, _ in messages if t.startswith(topics.ROOT + "/status/"))
        status = open_message(status_raw, Status).body
        assert any(s["state"] == status.state for s in json_of(status_topic.removeprefix(topics.ROOT + "/")))

        # What is retained: a reader arriving now gets every retained value before a live one.
        before = len(live.messages)
        late_reader, late = reader(street, "mirror-late", ("spb-json/#", "homeassistant/#"))
        try:
            wait_for(lambda: any(not r for _, _, r in late.messages), 30, "a live message after the retained ones")
            retained = {t: p for t, p, r in late.messages[: [r for _, _, r in late.messages].index(False)]}
        finally:
            late_reader.close()
        assert retained[MIRROR_STATE] == b"online"
        for meter in METERS:
            for topic, payload, retain in discovery(meter):
                assert retain and retained.get(topic) == payload, topic
            assert f"{JSON}meters/{meter}/summary" in retained
        assert len([t for t in retained if t.startswith("homeassistant/")]) == len(METERS) * len(SENSORS)
        for topic in retained:
            if topic.startswith(JSON) and not topic.endswith("/summary") and topic != MIRROR_STATE:
                assert retained_topic(f"{topics.ROOT}/{topic.removeprefix(JSON)}"), f"{topic} is retained"
        mirrored_retained = {
            t
            for t, _, _ in live.messages[:before]
            if t.startswith(JSON) and retained_topic(topics.ROOT + "/" + t[len(JSON) :])
        }
        assert mirrored_retained <= set(retained), mirrored_retained - set(retained)
        assert any("/status/" in t for t in mirrored_retained) and any("/birth" in t for t in mirrored_retained)

        # A clean stop says offline, retained, for Home Assistant's availability.
        street.procs.stop(proc)
        wait_for(lambda: (MIRROR_STATE, b"offline", False) in live.messages, 10, "the mirror's `offline`")
    finally:
        live_reader.close()


def test_after_a_broker_lost_its_state_the_mirror_says_it_all_again(tmp_path):
    """A broker restarted without its persistence file has no retained value left: on its
    reconnect the mirror publishes `online`, every discovery config and summary again."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    community = provision(tmp_path / "community", meters=2, accounts=None, validators=1, now_ms=wall_ms())
    write_genesis(community.root, community_genesis(community, 1_000, block_ms=200))
    broker = start_secure(community.root / "broker", free_port(), local_port=free_port())
    procs = Procs(tmp_path / "logs")
    assert broker.port is not None and broker.local_port is not None, "start_secure started both listeners"
    try:
        client = BusClient("127.0.0.1", broker.local_port, "restart-reader", clean_session=True)
        inbox = Inbox()
        client.subscribe("spb-json/#", inbox)
        client.subscribe("homeassistant/#", inbox)
        connected(client)
        proc = procs.start("mirror", "monitor.cli", "mirror", community.root, "--broker", broker.url)
        configs = {t for m in ("m0001", "m0002") for t, _, _ in discovery(m)}

        def said_all(since: int) -> bool:
            got = {t: p for t, p, _ in inbox.messages[since:]}
            return configs <= set(got) and got.get(MIRROR_STATE) == b"online"

        wait_for(lambda: said_all(0), 30, lambda: f"discovery and online{procs.logs()}", interval=0.05)
        broker.stop()
        assert broker.data_dir is not None
        (Path(broker.data_dir) / "mosquitto.db").unlink()
        mark = len(inbox.messages)
        broker.start(broker.port, broker.data_dir)
        wait_for(lambda: said_all(mark), 60, lambda: f"discovery and online again{procs.logs()}", interval=0.05)
        procs.stop(proc)
        client.close()
    finally:
        procs.kill_all()
        broker.stop()
