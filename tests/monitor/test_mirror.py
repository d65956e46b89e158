"""monitor.mirror's pure core: signed messages through a CommunityView into what the mirror
publishes, and the Home Assistant discovery configs checked against the rules HA applies to
an MQTT sensor (homeassistant/components/mqtt/sensor.py and the sensor device classes)."""

from __future__ import annotations

import json
from hashlib import sha256

import pytest
from nacl.signing import SigningKey

from ledger.workload import SimCommunity, pk
from monitor.mirror import (
    DISCOVERY_PREFIX,
    MIRROR_STATE,
    SENSORS,
    Mirror,
    discovery,
    encode,
    json_topic,
)
from monitor.records import record
from monitor.view import CommunityView
from wire import topics
from wire.messages import AccountStatus, Birth, CtpState, Reading, Retire, Status, open_message

NOW = 1_800_000_000_000
HOUSEHOLDS = 3
# What HA accepts per device class (SensorDeviceClass -> DEVICE_CLASS_UNITS and
# DEVICE_CLASS_STATE_CLASSES), for the classes the mirror uses.
HA_UNITS = {"power": {"W", "kW", "MW", "GW", "TW", "mW", "BTU/h"}, "energy": {"Wh", "kWh", "MWh", "GWh", "TWh", "mWh"}}
HA_STATE_CLASSES = {"power": {"measurement"}, "energy": {"total", "total_increasing"}, "enum": set()}
HA_STATE_CLASS_VALUES = {"measurement", "measurement_angle", "total", "total_increasing"}


@pytest.fixture
def community() -> SimCommunity:
    return SimCommunity(HOUSEHOLDS, NOW, sources=("solar",))


@pytest.fixture
def mirror(community: SimCommunity) -> Mirror:
    genesis = community.genesis(1_000, validators=4, market=community.market_terms())
    return Mirror(CommunityView(genesis))


def feed(mirror: Mirror, topic: str, payload: bytes) -> list[tuple[str, bytes, bool]]:
    """One message through the view (as monitor.feed does), then the mirror."""
    return mirror.outputs(mirror.view.apply(topic, payload, NOW))


def birth(c: SimCommunity, i: int, boot: int = 1) -> bytes:
    h = c.households[i]
    return Birth(meter=h.meter_id, cert=h.devcert, fw="1.2.0", boot=boot, t=NOW).sign(h.device)


def reading(c: SimCommunity, i: int, seq: int, wh_in: int = 10, wh_out: int = 3, w: int = 450, key=None) -> bytes:
    h = c.households[i]
    body = Reading(meter=h.meter_id, seq=seq, t=NOW + seq, wh_in=wh_in, wh_out=wh_out, w=w)
    return body.sign(key or h.device)


def held(c: SimCommunity, payer: int, payee: int, h: int = 5, signer: SigningKey | None = None) -> tuple[bytes, bytes]:
    ctp = sha256(b"trade%d%d" % (payer, payee)).digest()[:16]
    status = Status(
        ctp=ctp,
        state=CtpState.HELD,
        t=NOW,
        h=h,
        payer=pk(c.households[payer].account),
        payee=pk(c.households[payee].account),
        wh=12,
    )
    return ctp, status.sign(signer or c.validator_keys[1])


def by_topic(outputs) -> dict[str, tuple[dict, bool]]:
    return {t: (json.loads(p), r) for t, p, r in outputs}


# -- the JSON tree --


def test_json_topic_and_encoding() -> None:
    assert json_topic("spb/v1/meters/m0001/reading") == "spb-json/v1/meters/m0001/reading"
    assert json_topic("spb/v1/status/00ff") == "spb-json/v1/status/00ff"
    with pytest.raises(ValueError, match="not a protocol topic"):
        json_topic("spb-json/v1/meters/m0001/reading")
    assert encode({"b": 1, "a": "é", "c": None}) == '{"a":"é","b":1,"c":null}'.encode()


def test_reading_is_its_signed_record_not_retained_with_the_summary(community, mirror) -> None:
    feed(mirror, topics.meter("m0001", "birth"), birth(community, 0))
    raw = reading(community, 0, seq=1, wh_in=1234, wh_out=56, w=-700)
    out = by_topic(feed(mirror, topics.meter("m0001", "reading"), raw))
    value, retained = out["spb-json/v1/meters/m0001/reading"]
    assert value == record(open_message(raw, Reading).body) and not retained
    assert (value["wh_in"], value["wh_out"], value["w"], value["t_ms"]) == (1234, 56, -700, NOW + 1)
    summary, retained = out["spb-json/v1/meters/m0001/summary"]
    assert retained and (summary["w"], summary["wh_in"], summary["wh_out"]) == (-700, 1234, 56)
    assert set(out) == {"spb-json/v1/meters/m0001/reading", "spb-json/v1/meters/m0001/summary"}


def test_summary_only_when_it_changed(community, mirror) -> None:
    feed(mirror, topics.meter("m0001", "birth"), birth(community, 0))
    first = feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, seq=1))
    again = feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, seq=2))  # same values
    moved = feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, seq=3, wh_in=11))
    assert [t for t, _, _ in first] == ["spb-json/v1/meters/m0001/reading", "spb-json/v1/meters/m0001/summary"]
    assert [t for t, _, _ in again] == ["spb-json/v1/meters/m0001/reading"]
    assert [t for t, _, _ in moved] == ["spb-json/v1/meters/m0001/reading", "spb-json/v1/meters/m0001/summary"]
    assert json.loads(moved[1][1])["wh_in"] == 11
    assert mirror.counts["summaries"] == 2 + 1  # the birth's summary, then two changes


def test_state_and_birth_are_retained(community, mirror) -> None:
    mirror.start()
    state = by_topic(feed(mirror, topics.meter("m0002", "state"), b"online"))
    assert state["spb-json/v1/meters/m0002/state"] == ({"meter": "m0002", "state": "online"}, True)
    assert state["spb-json/v1/meters/m0002/summary"][0]["online"] is True
    raw = birth(community, 1, boot=7)
    born = by_topic(feed(mirror, topics.meter("m0002", "birth"), raw))
    assert born["spb-json/v1/meters/m0002/birth"] == (record(open_message(raw, Birth).body), True)
    assert born["spb-json/v1/meters/m0002/birth"][0]["boot"] == 7
    assert not any(t.startswith(DISCOVERY_PREFIX) for t in born), "a genesis meter was discovered at the start"


def test_status_and_account_move_their_meters_summaries(community, mirror) -> None:
    ctp, raw = held(community, payer=1, payee=0)
    out = by_topic(feed(mirror, topics.status(ctp), raw))
    value, retained = out[f"spb-json/v1/status/{ctp.hex()}"]
    assert retained and value == record(open_message(raw, Status).body)
    assert (value["state"], value["ctp"], value["h"]) == ("held", ctp.hex(), 5)
    for meter in ("m0001", "m0002"):
        summary = out[f"spb-json/v1/meters/{meter}/summary"][0]
        assert (summary["open_trades"], summary["last_trade"], summary["last_trade_state"]) == (1, ctp.hex(), "held")
    assert "spb-json/v1/meters/m0003/summary" not in out

    account = pk(community.households[2].account)
    raw = AccountStatus(account=account, balance=900, held=100, t=NOW, h=6).sign(community.validator_keys[0])
    out = by_topic(feed(mirror, topics.account(account), raw))
    value, retained = out[f"spb-json/v1/account/{account.hex()}"]
    assert retained and (value["balance_units"], value["held_units"]) == (900, 100)
    summary = out["spb-json/v1/meters/m0003/summary"][0]
    assert (summary["balance_units"], summary["held_units"]) == (900, 100)


def test_an_older_retained_status_is_not_mirrored(community, mirror) -> None:
    ctp, newer = held(community, payer=1, payee=0, h=9)
    _, older = held(community, payer=1, payee=0, h=4)
    assert feed(mirror, topics.status(ctp), newer)
    assert feed(mirror, topics.status(ctp), older) == []


def test_forged_or_unverifiable_messages_are_never_mirrored(community, mirror) -> None:
    assert feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, seq=1)) == [], "no birth: no key"
    feed(mirror, topics.meter("m0001", "birth"), birth(community, 0))
    forger = SigningKey(sha256(b"forger").digest())
    assert feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, seq=2, key=forger)) == []
    assert feed(mirror, topics.meter("m0002", "reading"), reading(community, 0, seq=3)) == [], "on another's topic"
    ctp, raw = held(community, payer=1, payee=0, signer=forger)
    assert feed(mirror, topics.status(ctp), raw) == []
    assert feed(mirror, topics.status(ctp), b"\xa0not cose") == []
    account = pk(community.households[0].account)
    raw = AccountStatus(account=account, balance=10**6, held=0, t=NOW, h=9).sign(community.households[0].account)
    assert feed(mirror, topics.account(account), raw) == []
    assert sum(mirror.refused.values()) == 6 and mirror.refused["signature"] >= 3
    assert mirror.view.trades == {} and mirror.view.accounts == {}


def test_traffic_that_is_not_the_monitors_is_ignored(community, mirror) -> None:
    assert feed(mirror, topics.meter("m0001", "coe/req"), b"anything") == []
    assert feed(mirror, topics.consensus_to(0), b"anything") == []
    assert mirror.counts["ignored"] == 2


# -- discovery --


def test_discovery_once_per_meter(community) -> None:
    mirror = Mirror(CommunityView(community.genesis(1_000, validators=4)))  # no market: no meters named
    assert mirror.start() == []
    first = feed(mirror, topics.meter("m0002", "birth"), birth(community, 1))
    configs = [t for t, _, _ in first if t.startswith(f"{DISCOVERY_PREFIX}/")]
    assert configs == [f"homeassistant/sensor/spb_m0002/{s.object}/config" for s in SENSORS]
    rebooted = feed(mirror, topics.meter("m0002", "birth"), birth(community, 1, boot=2))
    assert not [t for t, _, _ in rebooted if t.startswith(f"{DISCOVERY_PREFIX}/")]


def test_start_discovers_every_meter_of_the_genesis(mirror) -> None:
    out = mirror.start()
    meters = {t.split("/")[2] for t, _, _ in out}
    assert meters == {f"spb_m{i + 1:04d}" for i in range(HOUSEHOLDS)}
    assert len(out) == HOUSEHOLDS * len(SENSORS) and all(retain for _, _, retain in out)
    assert mirror.start() == []


def test_again_repeats_discovery_and_summaries(community, mirror) -> None:
    mirror.start()
    feed(mirror, topics.meter("m0001", "state"), b"online")
    again = mirror.again()
    assert len(again) == HOUSEHOLDS * len(SENSORS) + 1 and all(retain for _, _, retain in again)
    assert again[-1] == ("spb-json/v1/meters/m0001/summary", mirror.summaries["m0001"], True)


@pytest.mark.parametrize("meter", ["m0001", "m0042"])
def test_discovery_configs_are_valid_ha_sensors(meter: str) -> None:
    configs = discovery(meter)
    assert len(configs) == len(SENSORS)
    unique_ids = set()
    for topic, payload, retain in configs:
        assert retain
        c = json.loads(payload)
        check_ha_sensor(topic, c)
        unique_ids.add(c["unique_id"])
        assert c["device"] == {
            "identifiers": [f"spb_{meter}"],
            "name": f"Meter {meter}",
            "manufacturer": "spb-energy",
            "model": "Pi meter",
        }
        assert c["availability_mode"] == "all"
        assert c["availability"] == [
            {
                "topic": f"spb-json/v1/meters/{meter}/state",
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            {"topic": MIRROR_STATE, "payload_available": "online", "payload_not_available": "offline"},
        ]
        assert c["state_topic"] in (f"spb-json/v1/meters/{meter}/reading", f"spb-json/v1/meters/{meter}/summary")
    assert unique_ids == {f"spb_{meter}_{s.object}" for s in SENSORS}
    assert discovery(meter) == configs, "stable: the same bytes on every run"


def test_discovery_reads_the_fields_the_tree_has(community, mirror) -> None:
    """Each value template names a field of the JSON it reads: a reading's record, or the summary."""
    feed(mirror, topics.meter("m0001", "birth"), birth(community, 0))
    outputs = feed(mirror, topics.meter("m0001", "reading"), reading(community, 0, 1))
    out = {t: json.loads(p) for t, p, _ in outputs}
    for _, payload, _ in discovery("m0001"):
        c = json.loads(payload)
        field = c["value_template"].removeprefix("{{ value_json.").removesuffix(" }}")
        assert field in out[c["state_topic"]], (c["unique_id"], field)
    by_object = {json.loads(p)["unique_id"]: json.loads(p) for _, p, _ in discovery("m0001")}
    assert by_object["spb_m0001_power"]["value_template"] == "{{ value_json.w }}"
    assert by_object["spb_m0001_energy_imported"]["value_template"] == "{{ value_json.wh_in }}"
    assert by_object["spb_m0001_energy_exported"]["value_template"] == "{{ value_json.wh_out }}"
    assert by_object["spb_m0001_balance"]["value_template"] == "{{ value_json.balance_units }}"


def check_ha_sensor(topic: str, c: dict) -> None:
    """The checks HA's MQTT sensor platform makes of a discovered config, for what we send."""
    prefix, component, node, obj, config = topic.split("/")
    assert (prefix, component, config) == ("homeassistant", "sensor", "config")
    assert all(part and all(ch.isalnum() or ch in "_-" for ch in part) for part in (node, obj))
    for key in ("state_topic", "unique_id", "device", "name", "availability"):
        assert key in c, f"{topic}: no {key}"
    assert c["device"]["identifiers"] and all(isinstance(i, str) for i in c["device"]["identifiers"])
    assert all("topic" in a for a in c["availability"])
    assert c["default_entity_id"] == f"sensor.{c['unique_id']}" and "object_id" not in c
    assert not c["name"].startswith(c["device"]["name"]), "HA strips a device-name prefix and warns"
    device_class, state_class, unit = c.get("device_class"), c.get("state_class"), c.get("unit_of_measurement")
    if device_class in HA_UNITS:
        assert unit in HA_UNITS[device_class], f"{topic}: {unit} is no {device_class} unit"
    if device_class in HA_STATE_CLASSES:
        assert state_class is None or state_class in HA_STATE_CLASSES[device_class], f"{topic}: {state_class}"
    assert state_class is None or state_class in HA_STATE_CLASS_VALUES
    if "options" in c:  # only an enum sensor, with neither a unit nor a state class
        assert device_class == "enum" and c["options"] and unit is None and state_class is None
        assert set(c["options"]) == set(CtpState)
    assert device_class != "enum" or "options" in c
    assert c["origin"]["name"]


def test_a_retired_household_leaves_home_assistant(community) -> None:
    """The operator's verified `retire` removes the meter's discovery configs (an empty
    retained payload each, Home Assistant's way); it is not discovered again on a birth or a
    reconnect. A retire signed by someone else is refused and removes nothing."""
    genesis = community.genesis(1_000, validators=4, market=community.market_terms(), operator=True)
    mirror = Mirror(CommunityView(genesis))
    mirror.start()
    account, stranger = pk(community.households[1].account), SigningKey(b"\x05" * 32)
    forged = Retire(op=pk(stranger), account=account, t=NOW).sign(stranger)
    assert feed(mirror, topics.TX_RETIRE, forged) == [] and "m0002" in mirror.discovered
    out = feed(mirror, topics.TX_RETIRE, community.retire(account))
    removed = [t for t, payload, retain in out if t.startswith(f"{DISCOVERY_PREFIX}/") and payload == b"" and retain]
    assert removed == [f"homeassistant/sensor/spb_m0002/{s.object}/config" for s in SENSORS]
    assert "m0002" not in mirror.discovered
    reborn = feed(mirror, topics.meter("m0002", "birth"), birth(community, 1, boot=2))
    assert not [t for t, _, _ in reborn if t.startswith(f"{DISCOVERY_PREFIX}/")]
    assert not any("spb_m0002/" in t for t, _, _ in mirror.again())
