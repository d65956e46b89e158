"""broker.secure.acl: the account statuses' grants (docs/PROTOCOL.md §7 and §9.6, decision
0010) and the mirror's JSON tree (issue 16), as text; tests/system/test_broker_security.py
and tests/system/test_mirror_acl.py prove them on a real Mosquitto."""

from __future__ import annotations

from broker import secure

A1, A2 = "11" * 32, "22" * 32


def sections(text: str) -> dict[str, list[str]]:
    """user -> its grant lines (the last section of a user named twice, as revoked ones are)."""
    out: dict[str, list[str]] = {}
    user = None
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            out[user] = []
        elif user is not None and line.startswith("topic "):
            out[user].append(line)
    return out


def test_a_meter_reads_its_own_account_status_only():
    ids = secure.Identities(
        meters=("m0001", "m0002", "m0003"),
        validators=("v0",),
        monitors=("monitor",),
        accounts=(("m0001", A1), ("m0002", A2)),
    )
    acl = sections(secure.acl(ids))
    account_lines = {cn: [g for g in grants if "spb/v1/account" in g] for cn, grants in acl.items()}
    assert account_lines == {
        "m0001": [f"topic read spb/v1/account/{A1}"],
        "m0002": [f"topic read spb/v1/account/{A2}"],
        "m0003": [],  # a meter whose household has no account
        "v0": ["topic write spb/v1/account/#"],
        "monitor": [],  # reads spb/v1/#
    }
    assert "topic read spb/v1/#" in acl["v0"] and "topic read spb/v1/#" in acl["monitor"]
    assert not any(g.startswith("topic read spb/v1/#") or "account/#" in g for g in acl["m0001"])
    assert "topic read spb/v1/#" in secure.local_acl()


def test_a_revoked_meter_reads_no_account():
    ids = secure.Identities(meters=("m0001",), accounts=(("m0001", A1),), revoked=frozenset({"m0001"}))
    assert sections(secure.acl(ids)) == {"m0001": ["topic deny #"]}


def test_only_the_mirror_writes_the_json_tree_and_discovery_configs():
    """Issue 16: the mirror reads spb/v1 and writes only spb-json/# and homeassistant/#;
    monitoring users and the loopback listener read them; meters see none of it."""
    ids = secure.Identities(
        meters=("m0001",),
        validators=("v0",),
        monitors=("monitor",),
        mirrors=("mirror",),
        operators=("operator",),
        bridges=("bridge-east",),
        accounts=(("m0001", A1),),
    )
    acl = sections(secure.acl(ids))
    assert acl["mirror"] == [
        "topic read spb/v1/#",
        "topic write spb-json/#",
        "topic write homeassistant/#",
        "topic deny spb/v1/meters/mirror/#",  # cancels the meters' %u patterns
    ]
    assert acl["monitor"] == [
        "topic read spb/v1/#",
        "topic read spb-json/#",
        "topic read homeassistant/#",
        "topic deny spb/v1/meters/monitor/#",
    ]
    json_grants = {
        cn: [g for g in grants if g.split()[2].startswith(("spb-json/", "homeassistant/"))]
        for cn, grants in acl.items()
    }
    assert {cn: grants for cn, grants in json_grants.items() if grants} == {
        "mirror": ["topic write spb-json/#", "topic write homeassistant/#"],
        "monitor": ["topic read spb-json/#", "topic read homeassistant/#"],
    }  # meters, validators, the operator and bridges: none (the JSON tree is not bridged)
    local = secure.local_acl().splitlines()
    assert [line for line in local if line.startswith("topic")] == [
        "topic read spb/v1/#",
        "topic read spb-json/#",
        "topic read homeassistant/#",
    ]


def test_the_mirror_s_files_are_beside_the_operator_s_not_among_monitoring_users(tmp_path):
    assert secure.mirror_dir(tmp_path) == tmp_path / "mirror"
    assert secure.monitor_dir(tmp_path, "monitor") == tmp_path / "monitoring" / "monitor"
