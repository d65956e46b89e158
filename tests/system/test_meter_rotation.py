"""A household rotates its account key with a sale under way (issue 18, docs/PROTOCOL.md §10.3),
every part a real process on loopback: Mosquitto with the community's TLS and ACL, `spb-ledger
run`, `spb-meter run` on fake ADCs. m0002 buys from m0001 with a CTP naming m0001's account
key, held while m0001's meter is stopped; m0001's household runs `spb-meter rotate-key`, the
operator rewrites the ACL for the new key (`spb-deploy provision`), and m0001's meter starts
again with the new key. It takes the held trade naming its old key as its sale, exports for
it, and records it settled; its balance is the new key's, not the old key's 0/0."""

from __future__ import annotations

from broker import secure
from broker.clock import wall_ms
from broker.keys import load_key
from deploy.bus import broker_dir
from edge.store import MeterStore
from ledger.genesis import read_genesis
from ledger.operator import resolve_account
from tests.support.bus import run_module as command
from tests.support.bus import wait_for
from tests.support.community import running_community, watching
from tests.support.meter import in_store
from wire import topics
from wire.messages import AccountStatus, CtpState, Status

UNITS = 1_000
WH, PRICE_WH = 2, 5


def test_a_meter_restarted_with_a_new_key_delivers_and_records_a_sale_to_its_old_key(tmp_path, procs, make_client):
    with running_community(tmp_path, procs, UNITS) as (root, port, url):
        _sell_across_a_rotation(root, port, url, procs, make_client)


def _sell_across_a_rotation(root, port, url, procs, make_client) -> None:
    verifier = read_genesis(root).verifier()
    inbox = watching(root, port, make_client, procs)

    def statuses(payee: bytes) -> list[Status]:
        found = []
        for t, p, _ in list(inbox.messages):
            if t.startswith(topics.STATUS_ALL[:-1]):
                status = verifier.verify(p, wall_ms(), expect=Status).body
                if status.payee == payee:
                    found.append(status)
        return found

    def balance(account: bytes) -> tuple[int, int] | None:
        """The newest (balance, held) the ledger published for the account."""
        found = [
            verifier.verify(p, wall_ms(), expect=AccountStatus).body
            for t, p, _ in list(inbox.messages)
            if t == topics.account(account)
        ]
        newest = max(found, key=lambda s: (s.h, s.t), default=None)
        return None if newest is None else (newest.balance, newest.held)

    # m0002 buys from m0001, whose meter is stopped: its CoE comes from m0003.
    m1, m2 = root / "meters/m0001", root / "meters/m0002"
    old = resolve_account(root, "m0001")
    meter_args = ["--broker", url, "--adc", "fake", "--reading-s", "1", "--resend-s", "1"]
    procs.start("m0002", "edge.cli", "run", "--state-dir", m2, *meter_args, "--fake-w=3000")
    procs.start("m0003", "edge.cli", "run", "--state-dir", root / "meters/m0003", *meter_args, "--fake-w=0")

    def ctp_queued() -> bool:
        """`spb-meter ctp`, refused until the meter's key batch has its CoE from m0003."""
        ctp = command("edge.cli", "ctp", m2, old.hex(), WH * PRICE_WH, WH, "--expiry", "180")
        assert ctp.returncode == 0 or "CoE" in ctp.stderr, ctp.stdout + ctp.stderr
        return ctp.returncode == 0

    wait_for(ctp_queued, 60, lambda: f"m0002's key batch witnessed{procs.logs()}")
    [held] = wait_for(lambda: statuses(old), 30, lambda: f"the CTP to m0001's key held{procs.logs()}")
    assert held.state == CtpState.HELD and in_store(m1, MeterStore.sales) == []

    # m0001's household rotates its key (its meter stopped); the operator rewrites the ACL.
    rotated = command("edge.cli", "rotate-key", m1, "--broker", url, "--timeout", "60")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr + procs.logs()
    new = bytes(load_key(m1 / "account.key").verify_key)
    wait_for(lambda: balance(new) == (UNITS, 0), 10, "the new key's status")
    assert balance(old) == (0, 0)
    acl = command("deploy.cli", "provision", root, "--meters", "3", "--broker", url)
    assert acl.returncode == 0 and topics.account(new) in (broker_dir(root) / secure.ACL_NAME).read_text(), acl.stderr

    # m0001's meter, with the new key, takes the trade naming its old key as its sale.
    procs.start("m0001", "edge.cli", "run", "--state-dir", m1, *meter_args, "--fake-w=-3000")

    def sale_settled() -> bool:
        sales = in_store(m1, MeterStore.sales)
        assert [(s.id, s.role, s.payee) for s in sales] in ([], [(held.ctp, "sold", old)]), sales
        return bool(sales) and sales[0].state == CtpState.SETTLED

    wait_for(sale_settled, 120, lambda: f"m0001's sale to its old key settled{procs.logs()}")
    paid = (UNITS + WH * PRICE_WH, 0)
    wait_for(lambda: balance(new) == paid, 10, "the new key paid")
    wait_for(
        lambda: (in_store(m1, MeterStore.account) or (None,) * 6)[:2] == paid,
        30,
        lambda: f"m0001's meter shows the new key's balance{procs.logs()}",
    )
    assert in_store(m1, MeterStore.account).account == new
    for proc in procs.procs:
        if proc.poll() is None:
            procs.stop(proc)
    audited = command("ledger.cli", "audit", root)
    assert audited.returncode == 0, audited.stdout + audited.stderr
