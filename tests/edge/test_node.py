"""MeterNode's decisions with a real store and no broker: what it queues, and when not."""

from __future__ import annotations

import pytest

from broker import secure
from broker.clock import wall_ms
from deploy.provision import provision
from edge import tx
from edge.cli import lock_state_dir
from edge.config import MeterConfig
from edge.energy import WMS_PER_WH
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from edge.store import MeterStore
from tests.support import acl_table
from tests.support.meter import add_witnessed_batch
from wire import topics


@pytest.fixture
def node(tmp_path):
    """m0001 of a provisioned community, with a key batch whose CoE m0002 signed and one
    trade promised to m0002; never connected (port 9 is closed)."""
    now = wall_ms()
    community = provision(tmp_path / "c", meters=2, accounts=None, validators=1, now_ms=now)
    m1, m2 = (MeterIdentity.load(community.root / "meters" / m) for m in ("m0001", "m0002"))
    store = MeterStore(m1.root / "meter.db")
    add_witnessed_batch(store, m1, m2, now)
    tx.new_ctp(store, m1.account_key(), bytes.fromhex(community.meters[1].account_pk), 30, 2, now + 600_000, now)
    store.close()
    meter = MeterNode(m1, MeterConfig(resend_s=1), "127.0.0.1", 9, sense=lambda _elapsed: (0, 0))
    yield meter
    meter.store.close()


def outbox(node: MeterNode) -> list[str]:
    return [row.topic for row in node.store.outbox_after(0, 100)]


def test_nothing_is_sent_again_while_offline_or_while_the_last_copy_waits(node):
    """An unanswered CTP is sent again only when connected and once its last copy left the
    outbox: during an outage copies would pile up there (found by review: a day offline
    made 2880 copies of one CTP)."""
    later = wall_ms() + 60_000
    node.housekeeping(later)
    assert outbox(node) == [topics.TX_CTP]  # offline: no copy
    node.bus.connected.set()  # as after a connect and the birth (the pump's condition too)
    node.housekeeping(later + 1)
    assert outbox(node) == [topics.TX_CTP]  # the first copy still waits: no second one
    node.store.delivered([row.seq for row in node.store.outbox_after(0, 100)])  # the broker took it
    node.housekeeping(later + 2)
    assert outbox(node) == [topics.TX_CTP]  # now, and only now, sent again


def test_an_erc_makes_the_totals_it_counts_durable_first(node):
    """When a held trade's Wh have arrived, the reading with those totals is committed before
    the ERC, so the signed readings never show less energy than a signed ERC claims."""
    (trade,) = node.store.trades()
    node.store.update_trade(trade.id, lambda r: r._replace(state="held"))
    node.housekeeping(wall_ms())
    node.sample(0, 0)
    assert node.sample(3_000, 3_000) is False  # nothing imported yet
    node.sense = lambda _elapsed: (3600, 0)  # 1 Wh a second
    node.sample(3_001, 3_001)
    assert node.sample(5_001, 5_001) is True  # 2 Wh: the trade's promise
    node.housekeeping(wall_ms())
    assert outbox(node) == [topics.TX_CTP, topics.meter("m0001", "reading"), topics.TX_ERC]
    assert node.store.totals().wms_in == 2 * WMS_PER_WH
    assert node.store.trades()[0].erc is not None


def test_a_second_run_on_one_state_dir_is_refused(tmp_path):
    """Two meters on one state dir would fight over its client id, seqs and keys."""
    first = lock_state_dir(tmp_path)
    with pytest.raises(BlockingIOError):
        lock_state_dir(tmp_path)
    first.close()
    lock_state_dir(tmp_path).close()  # released with its holder


def test_a_state_dir_without_validators_is_refused(tmp_path):
    """A meter that cannot check statuses would trade into nothing: say so at start-up."""
    community = provision(tmp_path / "c", meters=1, accounts=None, validators=1, now_ms=wall_ms())
    toml = community.root / "meters" / "m0001" / "meter.toml"
    toml.write_text(
        "\n".join(
            line
            for line in toml.read_text().splitlines()
            if not line.startswith("validators") and not line.startswith('    "') and line != "]"
        )
    )
    with pytest.raises(ValueError, match="no ledger validators"):
        MeterIdentity.load(toml.parent)


def test_the_meter_reads_no_reading_and_subscribes_only_to_what_the_acl_lets_it_read(node):
    """Decision 0012: peers' births and states, not their readings (nor its own); and every
    filter it subscribes to is one the broker's ACL lets a meter read (docs/PROTOCOL.md §7)."""
    filters = set(node.bus._subscriptions)
    assert not [f for f in filters if f.endswith("/reading")]
    assert {topics.every_meter("birth"), topics.every_meter("state"), topics.account(node.market.account_pk)} <= filters
    ids = secure.Identities(meters=("m0001",), accounts=(("m0001", node.market.account_pk.hex()),))
    assert {f: "read" in acl_table.may(secure.acl(ids), "m0001", f) for f in filters} == dict.fromkeys(filters, True)
