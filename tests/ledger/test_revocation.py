"""Revoking a meter (docs/decisions/0004-revocation.md): the CA's `revoke` on spb/v1/tx/revoke
makes the ledger refuse, with `cert`, every ERC whose CoE the revoked meter witnessed at or
after the revocation time, while CoEs it witnessed before keep working. Over a real
Mosquitto: tests/system/test_ledger_revocation_bus.py.

In SimCommunity(3) household i's key batches are witnessed by household i + 1's meter, and
every CoE is issued at COE_T; tests.support.ledger.revoke makes a revocation.
"""

from __future__ import annotations

import sqlite3

import pytest

from ledger.audit import AuditFailure, audit
from ledger.node import LedgerNode
from ledger.store import LedgerStore
from ledger.workload import SimCommunity, pk
from tests.support.ledger import COE_T, NOW, Chain, ctp_id, revoke
from tests.support.wire import ROGUE_CA, sign_map
from wire.cose import encode
from wire.messages import CtpState, Revoke
from wire.verify import Verifier

HELD, SETTLED, REFUNDED = CtpState.HELD, CtpState.SETTLED, CtpState.REFUNDED


@pytest.fixture
def c():
    return SimCommunity(3, NOW)


@pytest.fixture
def chain(tmp_path, c):
    chain = Chain(tmp_path, c)
    yield chain
    chain.store.close()


def test_a_coe_witnessed_at_or_after_revocation_is_cert_and_the_ctp_refunds(chain, c):
    x = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)  # household 0's meter, witnessed by 1
    assert chain.block(NOW, ("ctp", x)) == [None]
    r = revoke(c, 1, COE_T)  # the CoE was issued exactly at the revocation time
    assert chain.block(NOW + 1, ("revoke", r)) == [None]
    block = chain.store.block(2)  # a revocation alone makes a block
    assert block.inputs == (("revoke", r),) and block.trades == ()
    assert chain.state.revoked == {pk(c.households[1].device): COE_T}
    erc = c.erc(x)
    assert chain.block(NOW + 2, ("erc", erc)) == ["cert"]
    # the rejected ERC is the input of a block of its own, which settles nothing
    assert chain.state.height == 3 and chain.state.record(ctp_id(x)).state == HELD
    assert chain.store.block(3).inputs == (("erc", erc),) and chain.store.block(3).trades == ()
    chain.block(NOW + 101)
    assert chain.state.record(ctp_id(x)).state == REFUNDED
    assert chain.state.balances[pk(c.households[0].account)] == 1_000
    assert audit(chain.store).height == 4


def test_a_coe_witnessed_before_revocation_still_settles(chain, c):
    x = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)
    assert chain.block(NOW, ("ctp", x), ("revoke", revoke(c, 1, COE_T + 1))) == [None, None]
    assert chain.block(NOW + 1, ("erc", c.erc(x))) == [None]
    assert chain.state.record(ctp_id(x)).state == SETTLED


def test_the_revoked_meters_own_ercs_still_settle(chain, c):
    """What revocation cannot do: the CoE names no requester, so the ledger cannot tell that
    household 1's meter signs an ERC under a batch another meter (2) witnessed."""
    y = c.ctp(1, 0, amount=10, wh=1, exp=NOW + 100)
    assert chain.block(NOW, ("revoke", revoke(c, 1, COE_T)), ("ctp", y)) == [None, None]
    assert chain.block(NOW + 1, ("erc", c.erc(y))) == [None]


def test_a_revocation_counts_from_its_place_in_the_block(chain, c):
    """Inputs are applied in order: an ERC before the revoke settles, one after it is `cert`."""
    x, y = (c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100) for _ in range(2))
    chain.block(NOW, ("ctp", x), ("ctp", y))
    assert chain.block(NOW + 1, ("erc", c.erc(x)), ("revoke", revoke(c, 1, COE_T)), ("erc", c.erc(y))) == [
        None,
        None,
        "cert",
    ]
    assert audit(chain.store).height == 2


def test_the_revocation_check_comes_first(chain, c):
    """`cert` (here for a CoE issued after r) before every other stateful ERC reason: the CTP was never held."""
    never = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)
    assert chain.block(NOW, ("revoke", revoke(c, 1, COE_T - 1)), ("erc", c.erc(never))) == [None, "cert"]


def test_revoke_is_a_schema_checked_body_signed_by_the_ca(c):
    """What `spb-deploy revoke` sends: the body refuses to encode what every ledger would reject."""
    raw = revoke(c, 1, COE_T)
    assert Verifier([pk(c.ca)]).verify(raw, NOW, expect="revoke").body == Revoke(
        meter="m0002", pk=pk(c.households[1].device), iss=pk(c.ca), t=COE_T
    )
    with pytest.raises(ValueError, match="pk"):
        Revoke(meter="m0002", pk=bytes(31), iss=pk(c.ca), t=COE_T).sign(c.ca)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda c: revoke(c, 1, COE_T, signer=c.households[1].device), "signature"),  # names the CA, not signed by it
        (lambda c: revoke(c, 1, COE_T, signer=ROGUE_CA, iss=ROGUE_CA), "cert"),  # untrusted CA
        (
            lambda c: sign_map(
                {"v": 1, "typ": "revoke", "pk": pk(c.households[1].device), "iss": pk(c.ca), "t": COE_T}, c.ca
            ),
            "schema",
        ),  # no meter
    ],
)
def test_a_forged_revoke_changes_nothing(chain, c, make, reason):
    x = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)
    assert chain.block(NOW, ("ctp", x)) == [None]
    forged = make(c)
    assert chain.block(NOW + 1, ("revoke", forged)) == [reason]
    assert chain.state.height == 2 and chain.store.block(2).inputs == (("revoke", forged),)  # decided, rejected
    assert chain.state.revoked == {} == chain.store.revocations()
    assert chain.block(NOW + 2, ("erc", c.erc(x))) == [None]


def test_a_revoke_only_on_its_topic(chain, c):
    assert chain.block(NOW, ("ctp", revoke(c, 1, COE_T))) == ["type"]
    assert chain.state.revoked == {}


def test_a_second_revoke_of_a_key_is_duplicate(chain, c):
    first = revoke(c, 1, COE_T)
    assert chain.block(NOW, ("revoke", first), ("revoke", revoke(c, 1, COE_T - 5))) == [None, "duplicate"]
    assert chain.block(NOW + 1, ("revoke", first)) == ["duplicate"]
    assert chain.state.height == 2 and chain.store.block(2).inputs == (("revoke", first),)
    assert chain.state.revoked == {pk(c.households[1].device): COE_T} == chain.store.revocations()


def test_a_restart_keeps_revocations(chain, c):
    x = c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)
    chain.block(NOW, ("ctp", x), ("revoke", revoke(c, 1, COE_T)))
    chain.store.close()
    node = LedgerNode(chain.identity)
    try:
        assert node.state.revoked == chain.state.revoked != {}
        assert node.decide([("erc", c.erc(x))], NOW + 1).reasons == ["cert"]
    finally:
        node.close()
    chain.store = LedgerStore(chain.identity.db_path, chain.identity.genesis)


@pytest.mark.parametrize(
    "sql, params",
    [
        ("UPDATE revoked SET t = t + 1", ()),
        ("DELETE FROM revoked", ()),
        ("INSERT INTO revoked VALUES (?, 0)", (bytes(32),)),
    ],
)
def test_audit_fails_on_a_tampered_revoked_table(chain, c, sql, params):
    chain.block(NOW, ("revoke", revoke(c, 1, COE_T)))
    chain.block(NOW + 1, ("ctp", c.ctp(0, 2, amount=10, wh=1, exp=NOW + 100)))
    assert audit(chain.store).height == 2
    db = sqlite3.connect(chain.identity.db_path)
    with db:
        db.execute(sql, params)
    db.close()
    with pytest.raises(AuditFailure, match="stored revocations differ") as info:
        audit(chain.store)
    assert info.value.height == 2


def test_audit_replays_the_revocation_block(chain, c):
    chain.block(NOW, ("revoke", revoke(c, 1, COE_T)))
    with chain.store.db:
        chain.store.db.execute("UPDATE blocks SET inputs = ? WHERE height = 1", (encode([]),))
    with pytest.raises(AuditFailure, match="changes nothing") as info:
        audit(chain.store)
    assert info.value.height == 1
