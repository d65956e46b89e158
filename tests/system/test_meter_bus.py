"""MeterNode on a real Mosquitto: births, readings verified by peers, retained state, reboots, wills."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from broker.clock import wall_ms
from deploy.provision import provision
from edge.config import MeterConfig
from edge.peers import PeerTable
from edge.state_dir import MeterIdentity
from tests.support.bus import REPO, child_env, connected, wait_for
from tests.support.meter import RunningMeter
from wire import topics
from wire.messages import Birth, Reading
from wire.reasons import Reject
from wire.verify import Verifier

READING_S = 0.2
POWER = {"m0001": 1500, "m0002": -2000}


@pytest.fixture
def community(tmp_path) -> dict[str, MeterIdentity]:
    """Two provisioned meters whose devcerts are valid now, by their ids."""
    root = tmp_path / "community"
    provision(root, meters=2, accounts=None, validators=1, now_ms=wall_ms() - 60_000)
    return {m: MeterIdentity.load(root / "meters" / m) for m in POWER}


@dataclass
class Observer:
    """A monitor's view of the bus: every meter message verified as it arrives, in arrival order."""

    peers: PeerTable
    births: dict[str, list[Birth]] = field(default_factory=lambda: defaultdict(list))
    readings: dict[str, list[Reading]] = field(default_factory=lambda: defaultdict(list))
    states: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    rejects: list[str] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        meter, leaf = topics.parse_meter_topic(topic)
        try:
            if leaf == "birth":
                self.births[meter].append(self.peers.on_birth(meter, payload, wall_ms()))
            elif leaf == "reading":
                self.readings[meter].append(self.peers.on_reading(meter, payload, wall_ms()))
            elif leaf == "state":
                self.states[meter].append(payload)
        except Reject as exc:
            self.rejects.append(f"{topic}: {exc}")

    def seqs(self, meter: str) -> list[int]:
        return [r.seq for r in self.readings[meter]]


@pytest.fixture
def observe(mosquitto, make_client, community):
    """observe(name): a connected client verifying everything under spb/v1/meters/ (retained included)."""

    def make(name: str = "observer") -> Observer:
        observer = Observer(PeerTable(Verifier(cas=[community["m0001"].ca_pk])))
        client = make_client(mosquitto.port, name, clean_session=True)
        client.subscribe(topics.METERS_ALL, observer)
        connected(client)
        return observer

    return make


@pytest.fixture
def start_meter(community, run_meter):
    """start_meter(id): a MeterNode on its state dir, running with its POWER; stopped at the end of the test."""

    def start(meter: str) -> RunningMeter:
        w = POWER[meter]
        return run_meter(community[meter], MeterConfig(reading_s=READING_S), lambda _elapsed: (max(w, 0), max(-w, 0)))

    return start


def meter_rejections(caplog) -> list[str]:
    """What the meters logged as rejected (MeterNode logs every Reject of a peer's message)."""
    return [r.getMessage() for r in caplog.records if r.name == "spb.meter" and " rejected " in r.getMessage()]


def test_meters_verify_each_others_birth_and_the_monitor_their_readings(
    mosquitto, read_retained, community, observe, start_meter, caplog
):
    """Each meter learns the other's device key from its birth (a CoE witness's key), never its
    readings (decision 0012: a neighbour's readings are private); the observer verifies the
    readings; state is retained."""
    observer = observe()
    m1, m2 = start_meter("m0001"), start_meter("m0002")

    for me, other in ((m1, "m0002"), (m2, "m0001")):
        wait_for(
            lambda me=me, other=other: me.node.peers.online() == [other],
            message=lambda me=me, other=other: f"{me.node.id.meter} to know {other} online: {me.node.peers.peers}",
        )
        peer = me.node.peers.peers[other]
        assert (peer.boot, peer.device_pk) == (1, bytes(community[other].device_key.verify_key))

    wait_for(lambda: all(len(observer.readings[m]) >= 2 for m in POWER), message=lambda: observer)
    assert observer.rejects == []
    assert meter_rejections(caplog) == []
    assert [me.node.peers.peers[other].last_seq for me, other in ((m1, "m0002"), (m2, "m0001"))] == [None, None]
    for meter in POWER:
        assert [b.boot for b in observer.births[meter]] == [1]
        assert observer.seqs(meter)[:2] == [1, 2]
        assert all(r.w == POWER[meter] for r in observer.readings[meter])
        assert read_retained(mosquitto.port, topics.meter(meter, "state"), f"late-{meter}") == (
            topics.meter(meter, "state"),
            b"online",
            True,
        )

    m2.stop()
    wait_for(lambda: m1.node.peers.online() == [], message="m0001 to see m0002 go offline")
    assert m1.node.peers.peers["m0002"].online is False
    m1.stop()
    for meter in POWER:
        assert read_retained(mosquitto.port, topics.meter(meter, "state"), f"after-{meter}") == (
            topics.meter(meter, "state"),
            b"offline",
            True,
        )


def test_restart_increments_boot_and_never_reuses_a_seq(mosquitto, read_retained, community, observe, start_meter):
    """A meter restarted on the same state dir has the next boot, keeps its totals, and continues its seqs."""
    observer = observe()
    first = start_meter("m0001")
    wait_for(lambda: len(observer.readings["m0001"]) >= 3, message=lambda: observer)
    first.stop()
    wait_for(lambda: observer.states["m0001"][-1:] == [b"offline"], message=lambda: observer.states)
    before = observer.seqs("m0001")
    assert before == list(range(1, len(before) + 1))

    second = start_meter("m0001")
    assert second.node.boot == first.node.boot + 1 == 2
    assert second.node.integrator.totals == first.node.integrator.totals and first.node.integrator.totals.wms_in > 0
    wait_for(lambda: len(observer.readings["m0001"]) >= len(before) + 2, message=lambda: observer)

    assert observer.rejects == []
    after = observer.seqs("m0001")[len(before) :]
    assert min(after) > max(before), f"seq reused after restart: {before} then {after}"
    assert after == sorted(set(after))
    assert [b.boot for b in observer.births["m0001"]] == [1, 2]

    _, raw, was_retained = read_retained(mosquitto.port, topics.meter("m0001", "birth"), "late")
    assert was_retained
    assert observe("late-verifier").peers.on_birth("m0001", raw, wall_ms()).boot == 2


def test_killed_meter_process_goes_offline_by_its_will(mosquitto, read_retained, community, observe, tmp_path):
    """`spb-meter run` killed without DISCONNECT: the broker publishes its will, retained `offline`."""
    observer = observe()
    log_path = tmp_path / "meter.log"
    with log_path.open("wb") as log:
        meter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "run",
                "--state-dir",
                str(community["m0001"].root),
                "--broker",
                f"127.0.0.1:{mosquitto.port}",
                "--fake-w",
                "1500",
                "--reading-s",
                str(READING_S),
            ],
            cwd=REPO,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: observer.readings["m0001"],
            timeout=20,
            message=lambda: f"a verified reading; meter log:\n{log_path.read_text()}",
        )
        assert observer.states["m0001"] == [b"online"]
        assert [b.boot for b in observer.births["m0001"]] == [1]
        meter.send_signal(signal.SIGKILL)
        assert meter.wait(10) == -signal.SIGKILL
    finally:
        meter.kill()
        meter.wait(10)

    wait_for(lambda: observer.states["m0001"][-1:] == [b"offline"], message=lambda: observer.states)
    assert observer.rejects == []
    assert read_retained(mosquitto.port, topics.meter("m0001", "state"), "late") == (
        topics.meter("m0001", "state"),
        b"offline",
        True,
    )


def test_restarted_meter_knows_its_peer_from_the_retained_birth_and_state(
    mosquitto, community, observe, start_meter, caplog
):
    """A meter restarted while its peer was away knows the peer again (its device key from the
    retained birth) and that it is offline (its will), without one of its readings."""
    observer = observe()
    m1, m2 = start_meter("m0001"), start_meter("m0002")
    wait_for(lambda: m1.node.peers.online() == ["m0002"], message="m0001 to know m0002 online")
    m1.stop()
    wait_for(lambda: observer.states["m0001"][-1:] == [b"offline"], message=lambda: observer.states)
    m2.stop()
    wait_for(lambda: observer.states["m0002"][-1:] == [b"offline"], message=lambda: observer.states)

    restarted = start_meter("m0001")
    wait_for(
        lambda: "m0002" in restarted.node.peers.peers and "m0002" in restarted.node.peers.states,
        message=lambda: f"m0001 to know m0002 again: {restarted.node.peers.peers}",
    )
    assert restarted.node.peers.peers["m0002"].device_pk == bytes(community["m0002"].device_key.verify_key)
    assert meter_rejections(caplog) == []
    assert restarted.node.peers.peers["m0002"].online is False
