"""broker.secure.acl: the account statuses' grants (docs/PROTOCOL.md §7 and §9.6, decision
0010), the mirror's JSON tree (issue 16) and §7's access table (decision 0012), as text;
tests/system/test_broker_security.py, test_mirror_acl.py and test_meter_privacy.py prove
them on a real Mosquitto."""

from __future__ import annotations

from broker import secure
from tests.support import acl_table
from wire import topics

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


IDENTITIES = secure.Identities(
    meters=("m0001", "m0002"),
    validators=("v0",),
    monitors=("monitor",),
    mirrors=("mirror",),
    operators=("operator",),
    bridges=("bridge-east",),
    accounts=(("m0001", A1), ("m0002", A2)),
)
# Who stands for each column of the table: the own meter is m0001 (its topics and account A1
# are the samples), the other meter m0002; None is an anonymous client of the loopback listener.
USERS = {
    "own meter": "m0001",
    "other meter": "m0002",
    "validator": "v0",
    "monitor": "monitor",
    "mirror": "mirror",
    "operator": "operator",
    "bridge": "bridge-east",
    "local": None,
}
SAMPLES = {
    "meter": ("m0001",),
    "account": (A1,),
    "id": ("ab" * 16,),
    "k": ("7",),
    "i": ("0", "3"),
    "to": ("all", "v2"),
    "path": ("meters/m0001/reading", "sensor/spb_m0001_power/config"),
}


def test_the_access_table_of_the_protocol_is_what_the_acl_grants():
    """docs/PROTOCOL.md §7's table (decision 0012) is the contract: each cell is what Mosquitto's
    reading of acl() (or local_acl(), for `local`) grants that identity on each sample topic."""
    table, tls, local = acl_table.rows(), secure.acl(IDENTITIES), secure.local_acl()
    assert tuple(USERS) == acl_table.COLUMNS
    wrong = []
    for row in table:
        for topic in row.samples(SAMPLES):
            for column, user in USERS.items():
                granted = acl_table.may(tls if user is not None else local, user, topic)
                if granted != row.access[column]:
                    wrong.append(f"{topic} {column}: table {row.access[column]}, ACL {granted}")
    assert wrong == []


def test_the_access_table_covers_every_topic_of_the_tree():
    """Each transaction topic has its row (a new one cannot be left out), and each topic the
    wire spells belongs to exactly one row."""
    table = acl_table.rows()
    tx = {t for row in table if row.template.startswith("spb/v1/tx/") for t in row.samples(SAMPLES)}
    assert tx == set(topics.TX_TYPES)
    pk, ctp = bytes.fromhex(A1), bytes.fromhex("ab" * 16)
    spelled = [
        *(topics.meter("m0042", leaf) for leaf in ("state", *topics.METER_TYPES)),
        topics.status(ctp),
        topics.REJECTS,
        topics.ledger_state(1),
        topics.LEDGER_BLOCKS,
        topics.CONSENSUS_ALL,
        topics.consensus_to(2),
        topics.market_order(9, ctp),
        topics.market_result(9),
        topics.account(pk),
        topics.statement(pk),
        topics.statement_request(pk),
        "spb-json/v1/status/" + "ab" * 16,
        "homeassistant/sensor/spb_m0042_power/config",
    ]
    for topic in spelled:
        acl_table.row_of(topic, table)  # exactly one


def test_a_meter_reads_no_readings_and_only_what_it_uses():
    """Issue 17: not a neighbour's readings, not its own; and each read a meter has is one
    running meter code subscribes to (ledger/state aside: harmless, decision 0012)."""
    acl = secure.acl(IDENTITIES)
    for reader in ("m0001", "m0002"):
        for writer in ("m0001", "m0002"):
            assert "read" not in acl_table.may(acl, reader, topics.meter(writer, "reading"))
    reads = [line.split()[2] for line in sections(acl)["m0001"] if line.split()[1] == "read"]
    assert reads == [
        topics.every_meter("birth"),
        topics.every_meter("state"),
        "spb/v1/status/#",
        topics.REJECTS,
        topics.LEDGER_STATE_ALL,
        topics.MARKET_ALL,
        topics.account(bytes.fromhex(A1)),
        topics.statement(bytes.fromhex(A1)),  # the answers to its statement requests (decision 0017)
    ]
    patterns = [line for line in acl.splitlines() if line.startswith("pattern read")]
    assert patterns == ["pattern read spb/v1/meters/%u/coe/req", "pattern read spb/v1/meters/%u/coe/resp"]
