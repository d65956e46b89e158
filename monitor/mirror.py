"""spb-monitor mirror: each verified message again as JSON, and Home Assistant discovery.

Tools that speak MQTT but not COSE (Home Assistant, Node-RED, Telegraf, mosquitto_sub) read
the community from `spb-json/v1/...`: every message the monitor verified, as its JSON record
(monitor.records), on the topic of its source with `spb/v1` replaced by `spb-json/v1`,
retained where the source is. A forged or unverifiable message is never mirrored, so a JSON
value is only ever what a genesis key signed. Beside them, one retained summary per meter
(power, energy, balance, trades: CommunityView.meter_summary) and the MQTT discovery configs
that make each meter a Home Assistant device (docs/MONITORING.md).

`Mirror` is the pure core: a verdict of the view in, (topic, payload, retain) out. `run` is
the adapter: the feed's listener hands the outputs to the main thread, which publishes them,
so nothing is published from paho's network thread while the feed's lock is held.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from broker import secure
from monitor.feed import Feed
from monitor.runner import connected_feed, say, until_signalled
from monitor.view import CommunityView, Seen, Unverified, Verified
from wire import topics
from wire.messages import CtpState

log = logging.getLogger(__name__)

IDENTITY = "mirror"  # DIR/mirror: reads spb/v1/#, alone writes spb-json/# and homeassistant/#
JSON_ROOT = f"{secure.JSON_TREE}/v1"
DISCOVERY_PREFIX = secure.DISCOVERY_PREFIX
MIRROR_STATE = f"{JSON_ROOT}/mirror/state"  # `online`, or `offline` (our will), retained
ONLINE, OFFLINE = "online", "offline"
WILL = (MIRROR_STATE, OFFLINE.encode(), True)
SUMMARY_FOR = frozenset({"reading", "birth", "state", "status", "account"})  # kinds that move a summary
STOP_POLL_S = 0.5  # how often the publishing loop looks at the stop flag while the bus is quiet
FLUSH_S = 5.0  # at exit, how long to wait for the broker to take our last `offline`

Output = tuple[str, bytes, bool]  # (topic, payload, retain)


class Sensor(NamedTuple):
    """One Home Assistant sensor of a meter device: where its value is and what it measures."""

    object: str  # the discovery topic's object id; unique_id is spb_{meter}_{object}
    name: str  # the entity's name under its device (HA prefixes the device name)
    leaf: str  # `reading` (spb-json/v1/meters/{meter}/reading) or `summary`
    key: str  # the JSON field the value template reads
    unit: str | None
    device_class: str | None
    state_class: str | None
    options: tuple[str, ...] = ()  # an `enum` sensor's every possible value


# Power and energy straight from the signed readings (HA's energy dashboard takes the two
# total_increasing Wh sensors as grid import and export); money and trades from the summary.
SENSORS = (
    Sensor("power", "Power", "reading", "w", "W", "power", "measurement"),
    Sensor("energy_imported", "Energy imported", "reading", "wh_in", "Wh", "energy", "total_increasing"),
    Sensor("energy_exported", "Energy exported", "reading", "wh_out", "Wh", "energy", "total_increasing"),
    Sensor("balance", "Balance", "summary", "balance_units", "units", None, "measurement"),
    Sensor("open_trades", "Open trades", "summary", "open_trades", None, None, "measurement"),
    Sensor("last_trade_state", "Last trade state", "summary", "last_trade_state", None, "enum", None, tuple(CtpState)),
)


def json_topic(topic: str) -> str:
    """spb/v1/<path> -> spb-json/v1/<path>: a JSON value sits where its source does."""
    prefix = f"{topics.ROOT}/"
    if not topic.startswith(prefix):
        raise ValueError(f"{topic!r} is not a protocol topic")
    return f"{JSON_ROOT}/{topic[len(prefix) :]}"


def meter_json_topic(meter: str, leaf: str) -> str:
    """spb-json/v1/meters/{meter}/{leaf}: a mirrored meter topic, or `summary`."""
    return json_topic(topics.meter(meter, leaf))


def encode(value: Any) -> bytes:
    """The one JSON encoding of the tree: sorted keys, no spaces, UTF-8 (equal values, equal bytes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def slug(meter: str) -> str:
    """A meter id as Home Assistant ids take it ([a-z0-9_]): m0001 stays m0001."""
    return re.sub(r"[^a-z0-9_]", "_", meter.lower())


def discovery(meter: str, prefix: str = DISCOVERY_PREFIX) -> list[Output]:
    """Home Assistant MQTT discovery configs of one meter's sensors, retained, one device.

    An entity is available while both its meter (the mirrored will: spb-json/v1/meters/{meter}/state)
    and the mirror (spb-json/v1/mirror/state) say `online`: a value from a stopped mirror is stale."""
    node = f"spb_{slug(meter)}"
    device = {"identifiers": [node], "name": f"Meter {meter}", "manufacturer": "spb-energy", "model": "Pi meter"}
    availability = [
        {
            "topic": meter_json_topic(meter, "state"),
            "value_template": "{{ value_json.state }}",
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
        },
        {"topic": MIRROR_STATE, "payload_available": ONLINE, "payload_not_available": OFFLINE},
    ]
    out = []
    for s in SENSORS:
        config: dict[str, Any] = {
            "name": s.name,
            "unique_id": f"{node}_{s.object}",
            "default_entity_id": f"sensor.{node}_{s.object}",  # HA 2025.10+; object_id is gone since 2026.4
            "state_topic": meter_json_topic(meter, s.leaf),
            # A null renders as `None`, which HA takes for an unknown state.
            "value_template": f"{{{{ value_json.{s.key} }}}}",
            "device": device,
            "availability": availability,
            "availability_mode": "all",
            "origin": {"name": "spb-energy"},
            "qos": 1,
        }
        extra = {
            "unit_of_measurement": s.unit,
            "device_class": s.device_class,
            "state_class": s.state_class,
            "options": list(s.options) or None,
        }
        config |= {k: v for k, v in extra.items() if v is not None}
        out.append((f"{prefix}/sensor/{node}/{s.object}/config", encode(config), True))
    return out


@dataclass
class Mirror:
    """What to publish for each verdict of the view; remembers only what it must not repeat."""

    view: CommunityView
    summaries: dict[str, bytes] = field(default_factory=dict)  # meter -> its last published summary
    discovered: set[str] = field(default_factory=set)  # meters whose discovery configs we published
    counts: Counter[str] = field(default_factory=Counter)  # mirrored, summaries, discovery, ignored
    refused: Counter[str] = field(default_factory=Counter)  # unverified messages, by reason

    def start(self) -> list[Output]:
        """Discovery for every meter of the genesis: their devices exist before they say a word."""
        return [o for meter in sorted(set(self.view.meter_of.values())) for o in self._discover(meter)]

    def outputs(self, seen: Seen) -> list[Output]:
        """The JSON of a verified message, then what it changed: a new meter's discovery, summaries.

        Call it right after the view applied the message (the summaries read the view)."""
        if seen is None:
            self.counts["ignored"] += 1
            return []
        if isinstance(seen, Unverified):
            self.refused[seen.reason] += 1
            return []
        out = [(json_topic(seen.topic), encode(seen.record), seen.retained)]
        self.counts["mirrored"] += 1
        if seen.kind == "retire":
            out += self._forget_retired()
        for meter in self.concerned(seen):
            if seen.kind == "birth":
                out += self._discover(meter)
            out += self._summary(meter)
        return out

    def concerned(self, seen: Verified) -> list[str]:
        """The meters whose summary a verified message may have changed."""
        if seen.kind not in SUMMARY_FOR:
            return []
        parsed = topics.parse_meter_topic(seen.topic)
        if parsed is not None:
            return [parsed[0]]
        if seen.kind == "account":
            accounts: tuple[str, ...] = (seen.record["account"],)
        else:  # a trade's status: both its parties, as the view knows them
            accounts = self.view.parties.get(seen.record["ctp"], ("", "", 0))[:2]
        return sorted({self.view.meter_of[a] for a in accounts if a in self.view.meter_of})

    def again(self) -> list[Output]:
        """After a reconnect: every discovery config and summary once more. The same bytes to a
        broker that kept them; their values back at once to one that lost its retained store."""
        out = [o for meter in sorted(self.discovered) for o in discovery(meter)]
        return out + [(meter_json_topic(m, "summary"), raw, True) for m, raw in sorted(self.summaries.items())]

    def _forget_retired(self) -> list[Output]:
        """An empty retained config per sensor of each retired household's meter: Home
        Assistant removes the entities (its MQTT discovery's way), and the broker forgets them."""
        gone = sorted(self.discovered & self.view.retired)
        self.discovered -= set(gone)
        return [(topic, b"", True) for meter in gone for topic, _, _ in discovery(meter)]

    def _discover(self, meter: str) -> list[Output]:
        if meter in self.discovered or meter in self.view.retired:
            return []
        self.discovered.add(meter)
        self.counts["discovery"] += 1
        return discovery(meter)

    def _summary(self, meter: str) -> list[Output]:
        raw = encode(self.view.meter_summary(meter))
        if self.summaries.get(meter) == raw:
            return []
        self.summaries[meter] = raw
        self.counts["summaries"] += 1
        return [(meter_json_topic(meter, "summary"), raw, True)]


# -- the adapter --

_RECONNECTED = None  # a queue item: publish `online` and Mirror.again()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Nothing beyond DIR, --broker and --identity: the mirror's topics are fixed (docs/MONITORING.md)."""


def run(args: argparse.Namespace) -> int:
    """Mirror until SIGINT or SIGTERM; exit 0 after saying `offline` and logging what we did."""
    stop = until_signalled()
    if not args.broker.tls:
        log.warning(
            "plain MQTT: fine for a development broker, but a community broker's read-only listener drops "
            "what the mirror publishes (mqtts:// with DIR/mirror writes the JSON tree)"
        )
    feed = Feed.of_community(args.dir)
    mirror = Mirror(feed.view)
    work: queue.SimpleQueue[list[Output] | None] = queue.SimpleQueue()
    work.put(mirror.start())

    def listener(seen: Seen) -> None:  # paho's network thread, under feed.lock
        if isinstance(seen, Unverified):
            log.info("not mirrored: %s on %s: %s", seen.reason, seen.topic, seen.detail)
        outputs = mirror.outputs(seen)
        if outputs:
            work.put(outputs)

    feed.listeners.append(listener)
    published = 0

    def publish(item: list[Output] | None) -> None:
        nonlocal published
        if item is _RECONNECTED:
            with feed.lock:
                item = [(MIRROR_STATE, ONLINE.encode(), True), *mirror.again()]
        for topic, payload, retain in item:
            client.publish(topic, payload, retain=retain)
        published += len(item)

    with connected_feed(args, feed, will=WILL) as (_, client):
        client.on_connect.append(lambda: work.put(_RECONNECTED))  # the first connect is done: later ones
        client.publish(MIRROR_STATE, ONLINE.encode(), retain=True)
        say(f"mirroring to {JSON_ROOT} as {client.client_id}")
        while not stop.is_set():
            try:
                publish(work.get(timeout=STOP_POLL_S))
            except queue.Empty:
                continue
        with feed.lock:  # what was verified before the stop still goes out
            feed.listeners.remove(listener)
        while not work.empty():
            publish(work.get())
        last = client.publish(MIRROR_STATE, OFFLINE.encode(), retain=True)
        if not client.wait_acked(last, FLUSH_S):  # the broker acknowledges in order: all before it too
            log.warning("the broker did not take our last messages within %.0f s; our will says offline", FLUSH_S)
    with feed.lock:
        counts, refused = dict(mirror.counts), dict(mirror.refused)
    log.info("mirror stopped: published %d, %s, not mirrored (unverified) %s", published, counts, refused or "none")
    return 0
