"""A revocation on the bus (docs/decisions/0004-revocation.md): a LedgerService on a test
clock over a real Mosquitto refuses the ERC after the revoke (the rules themselves:
tests/ledger/test_revocation.py)."""

from __future__ import annotations

from ledger.audit import audit
from ledger.store import LedgerStore
from ledger.workload import SimCommunity, pk
from tests.support.bus import Inbox, connected
from tests.support.ledger import (
    COE_T,
    NOW,
    RunningLedger,
    ctp_id,
    ledger_dir,
    rejections,
    revoke,
    wait_online,
    wait_reject,
    wait_status,
)
from wire import topics
from wire.cose import message_hash
from wire.messages import CtpState


def test_revocation_on_the_bus(tmp_path, mosquitto, make_client):
    """Over Mosquitto, with a ledger on a test clock: the ERC after the revoke is `cert`, its
    CTP stays held and is refunded at expiry; a second revoke of the key is `duplicate`, while
    the same revoke sent again soon after it was decided is a broker copy: acknowledged, no
    new block, no reject (issue 6)."""
    c = SimCommunity(3, NOW)
    now = [NOW]
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic_filter in (topics.STATUS_ALL, topics.REJECTS, topics.ledger_state(0)):
        watcher.subscribe(topic_filter, inbox)
    connected(watcher)
    ledger = RunningLedger(ledger_dir(tmp_path, c), mosquitto.port, clock=lambda: now[0])
    try:
        wait_online(inbox)  # subscribed: what is published from now on reaches it
        sender = connected(make_client(mosquitto.port, "relay"))
        x = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 1_000)
        sender.publish(topics.TX_CTP, x)
        wait_status(inbox, ctp_id(x), CtpState.HELD)
        r, erc = revoke(c, 1, COE_T), c.erc(x)
        sender.publish(topics.TX_REVOKE, r)
        sender.publish(topics.TX_ERC, erc)  # after the revoke on one connection: the ledger applies it after
        assert wait_reject(inbox, message_hash(erc)).reason == "cert"
        sender.publish(topics.TX_REVOKE, r)  # decided already: a copy, acknowledged silently
        again = revoke(c, 1, COE_T - 5)  # another revoke of the same key, after it on one connection
        sender.publish(topics.TX_REVOKE, again)
        assert wait_reject(inbox, message_hash(again)).reason == "duplicate"
        assert [x for x in rejections(inbox) if x.msg == message_hash(r)] == []
        now[0] = NOW + 1_001
        assert wait_status(inbox, ctp_id(x), CtpState.REFUNDED).msg is None
    finally:
        ledger.stop()
    identity = ledger.service.identity
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    try:
        assert store.revocations() == {pk(c.households[1].device): COE_T}
        blocks = [block for _, block in store.blocks()]
        # every message decided once, rejected ones too, in arrival order; the last block
        # is the refund at expiry alone (the revoke and its ERC may share a block)
        assert [i for block in blocks for i in block.inputs] == [
            ("ctp", x),
            ("revoke", r),
            ("erc", erc),
            ("revoke", again),
        ]
        assert blocks[-1].inputs == () and len(blocks) in (4, 5)
        assert audit(store).height == len(blocks)
    finally:
        store.close()
