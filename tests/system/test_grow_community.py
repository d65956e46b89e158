"""A running community grows and moves money (issue 18), every part a real process on
loopback: Mosquitto with the community's TLS and ACL, `spb-ledger run`, and the operator's
and the household's commands. Three households join with `spb-deploy provision --meters 6
--broker` (which also reloads the broker's ACL), the operator funds, pays out and retires
through `spb-ledger`, a household rotates its key with `spb-meter rotate-key`, and the
operator replaces another's lost key, and the ledger's audit holds at the end."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from broker import secure
from broker.client import TlsFiles
from broker.clock import wall_ms
from broker.keys import load_key
from deploy.bus import broker_dir
from ledger.genesis import read_genesis
from ledger.operator import resolve_account
from tests.support.bus import Inbox, connected, wait_for
from tests.support.bus import run_module as command
from tests.support.community import running_community
from wire import topics
from wire.messages import AccountStatus

UNITS = 1_000


@pytest.fixture
def running(tmp_path, procs):
    """A provisioned community of three households (one validator) with its TLS broker and
    ledger running: (root, broker URL)."""
    with running_community(tmp_path, procs, UNITS, block_ms=100, interval_s=None) as (root, port, url):
        yield root, url, port


def test_households_join_and_money_moves_on_a_running_community(running, procs, make_client):
    root, url, port = running
    verifier = read_genesis(root).verifier()
    inbox = Inbox()
    monitor = make_client(port, "monitor", clean_session=True, tls=TlsFiles.in_dir(root / "monitoring/monitor"))
    monitor.subscribe(topics.ACCOUNT_ALL, inbox)
    monitor.subscribe(topics.ledger_state(0), inbox)
    connected(monitor)
    # Until the ledger has subscribed, a transaction reaches no one (the command would time out).
    wait_for(
        lambda: any(p.startswith(b"online") for t, p, _ in list(inbox.messages) if t == topics.ledger_state(0)),
        60,
        lambda: f"the ledger online{procs.logs()}",
    )

    def status(account: bytes) -> tuple[int, int, int] | None:
        """(balance, held, h) of the newest verified status of the account seen so far."""
        seen = [
            verifier.verify(p, wall_ms(), expect=AccountStatus).body
            for t, p, _ in list(inbox.messages)
            if t == topics.account(account)
        ]
        newest = max(seen, key=lambda s: s.h, default=None)
        return None if newest is None else (newest.balance, newest.held, newest.h)

    # Three households join: their register goes out, and each new account's status shows.
    grown = command("deploy.cli", "provision", root, "--meters", "6", "--broker", url, "--timeout", "60")
    assert grown.returncode == 0, grown.stdout + grown.stderr + procs.logs()
    assert f"{broker_dir(root)} re-read the ACL" in grown.stdout
    for meter in ("m0004", "m0005", "m0006"):
        assert f"applied    register a{meter[1:]}" in grown.stdout, grown.stdout
        account = resolve_account(root, meter)
        wait_for(lambda a=account: status(a), 10, f"{meter}'s account status on the bus")
        assert status(account)[:2] == (0, 0)
    assert read_genesis(root).verifier().validators == verifier.validators  # the genesis was kept
    # The broker re-read its ACL: a new meter reads its household's money with its own certificate.
    own = Inbox()
    m4 = make_client(port, "m0004", clean_session=True, tls=TlsFiles.in_dir(root / "meters" / "m0004"))
    m4.subscribe(topics.account(resolve_account(root, "m0004")), own)
    connected(m4)
    own.wait_count(1)
    m4.close()
    again = command("deploy.cli", "provision", root, "--meters", "6", "--broker", url)
    assert again.returncode == 0 and "register" not in again.stdout, again.stdout + again.stderr  # all done

    # Money in, once per reference.
    a5 = resolve_account(root, "0005")
    funded = command("ledger.cli", "fund", root, "0005", 500, "--ref", "bank-1", "--broker", url)
    assert funded.returncode == 0, funded.stdout + funded.stderr + procs.logs()
    assert funded.stdout.startswith("applied    fund") and "balance 500 held 0" in funded.stdout
    wait_for(lambda: status(a5) and status(a5)[0] == 500, 10, "the fund on the bus")
    height = status(a5)[2]
    replayed = command("ledger.cli", "fund", root, "0005", 500, "--ref", "bank-1", "--broker", url)
    assert replayed.returncode == 1 and replayed.stdout.startswith("rejected   fund: duplicate"), replayed.stdout

    # Money out, never more than is free.
    too_much = command("ledger.cli", "withdraw", root, "m0005", 501, "--ref", "pay-1", "--broker", url)
    assert too_much.returncode == 1, too_much.stdout + too_much.stderr
    assert too_much.stdout.startswith("rejected   withdraw: insufficient-funds"), too_much.stdout
    paid = command("ledger.cli", "withdraw", root, a5.hex(), 200, "--ref", "pay-2", "--broker", url)
    assert paid.returncode == 0 and "balance 300 held 0" in paid.stdout, paid.stdout + paid.stderr
    wait_for(lambda: status(a5)[0] == 300, 10, "the payout on the bus")
    assert status(a5)[2] > height  # only the payout moved it since the fund: the replay changed nothing

    # A retired account takes no more money.
    retired = command("ledger.cli", "retire", root, "0006", "--broker", url)
    assert retired.returncode == 0 and retired.stdout.startswith("applied    retire"), retired.stdout + retired.stderr
    refused = command("ledger.cli", "fund", root, "0006", 5, "--ref", "bank-2", "--broker", url)
    assert refused.returncode == 1 and refused.stdout.startswith("rejected   fund: retired"), refused.stdout

    # A usage error: no such account.
    unknown = command("ledger.cli", "fund", root, "0042", 5, "--ref", "bank-3", "--broker", url)
    assert unknown.returncode == 2 and "0042" in unknown.stderr

    # A household replaces its key: the balance follows it.
    m1 = root / "meters" / "m0001"
    old = resolve_account(root, "0001")
    rotated = command("edge.cli", "rotate-key", m1, "--broker", url, "--timeout", "60")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr + procs.logs()
    new = bytes(load_key(m1 / "account.key").verify_key)
    assert new != old and (m1 / f"account.key.{old.hex()[:16]}.old").exists()
    wait_for(lambda: status(new), 10, "the new key's status")
    assert status(new)[:2] == (UNITS, 0) and status(old)[:2] == (0, 0)
    # The operator replaces a lost key: the household's money follows it too.
    old2, new2 = resolve_account(root, "0002"), bytes(SigningKey.generate().verify_key)
    by_operator = command("ledger.cli", "rotate", root, "0002", new2.hex(), "--broker", url)
    assert by_operator.returncode == 0 and by_operator.stdout.startswith("applied    rotate"), by_operator.stdout
    wait_for(lambda: status(new2), 10, "the operator's new key's status")
    assert status(new2)[:2] == (UNITS, 0) and status(old2)[:2] == (0, 0)
    # The operator regenerates the ACL from the rotated key: nothing to register.
    acl = command("deploy.cli", "provision", root, "--meters", "6", "--broker", url)
    assert acl.returncode == 0 and "register" not in acl.stdout, acl.stdout + acl.stderr
    assert topics.account(new) in (broker_dir(root) / secure.ACL_NAME).read_text()

    for proc in procs.procs:
        procs.stop(proc)
    audited = command("ledger.cli", "audit", root)
    assert audited.returncode == 0, audited.stdout + audited.stderr
