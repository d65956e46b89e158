"""The mirror identity on a real Mosquitto with the provisioned TLS config and ACL (issue 16).

`spb-monitor mirror` republishes verified messages as JSON on spb-json/v1/... and Home
Assistant discovery configs on homeassistant/...: only its certificate (DIR/mirror) may write
there, it may write nothing of spb/v1, monitoring users and the anonymous loopback listener
read both trees, and meters read neither. Mosquitto acknowledges a denied publish like any
other and routes a message before acknowledging it, so each check publishes what must be
refused, waits for the PUBACKs, then has an allowed sender publish a sentinel that the watcher
may read, and looks at everything the watcher got up to it (tests.support.acl_bus).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.clock import wall_ms
from deploy.provision import provision
from tests.support.acl_bus import LOCAL, broker, bus, publish_all, sentinel

JSON_AND_DISCOVERY = ("spb-json/#", "homeassistant/#")
READING_JSON = "spb-json/v1/meters/m0001/reading"
DISCOVERY = "homeassistant/sensor/spb_m0001_reading/config"


@pytest.fixture
def community(tmp_path) -> Path:
    root = tmp_path / "community"
    provision(root, meters=2, accounts=None, validators=1, now_ms=wall_ms())
    return root


def test_the_mirror_s_trees_reach_monitors_and_the_local_listener_and_no_meter(bus):
    monitor = bus("monitoring/monitor", JSON_AND_DISCOVERY)
    local = bus(LOCAL, JSON_AND_DISCOVERY)
    # The meter's marker filter is one it may read, so its empty inbox proves a denial.
    meter = bus("meters/m0001", (*JSON_AND_DISCOVERY, "spb/v1/meters/+/state"))
    mirror = bus("mirror")
    publish_all(mirror, [READING_JSON], b'{"kwh": 1}')
    publish_all(mirror, [DISCOVERY], b'{"state_topic": "spb-json/v1/meters/m0001/reading"}')
    for watcher in (monitor, local):
        assert sentinel(watcher, mirror, "spb-json/v1/marker") == [
            (READING_JSON, b'{"kwh": 1}'),
            (DISCOVERY, b'{"state_topic": "spb-json/v1/meters/m0001/reading"}'),
            ("spb-json/v1/marker", b"sentinel"),
        ]
    assert sentinel(meter, bus("meters/m0002"), "spb/v1/meters/m0002/state") == [
        ("spb/v1/meters/m0002/state", b"sentinel")
    ]


def test_the_mirror_writes_nothing_of_the_protocol(bus):
    watcher = bus("monitoring/monitor", ("spb/v1/#",))
    mirror = bus("mirror")
    publish_all(
        mirror,
        [
            f"spb/v1/status/{'ab' * 16}",
            "spb/v1/meters/mirror/state",  # the meters' %u patterns give it nothing either
            "spb/v1/meters/m0001/reading",
            "spb/v1/tx/ctp",
            "spb/v1/tx/revoke",
            "spb/v1/ledger/state",
            "spb/v1/market/7/result",
        ],
    )
    meter = bus("meters/m0001")
    assert sentinel(watcher, meter, "spb/v1/meters/m0001/state") == [("spb/v1/meters/m0001/state", b"sentinel")]


@pytest.mark.parametrize("who", ["meters/m0001", "validators/v0", "monitoring/monitor", "operator", LOCAL])
def test_only_the_mirror_writes_the_json_tree_and_discovery_configs(bus, who):
    watcher = bus(LOCAL if who == "monitoring/monitor" else "monitoring/monitor", JSON_AND_DISCOVERY)
    publish_all(bus(who), [READING_JSON, "spb-json/v1/tx/ctp", DISCOVERY, "homeassistant/status"])
    assert sentinel(watcher, bus("mirror"), "spb-json/v1/marker") == [("spb-json/v1/marker", b"sentinel")]


__all__ = ["broker", "bus"]  # fixtures used by name
